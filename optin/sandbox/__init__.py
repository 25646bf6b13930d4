"""Local stand-in for UPS's OAuth endpoints and UPS.com sign-in pages.

It imports nothing from the rest of ``optin``. ``create_app`` builds the ASGI app,
and ``start_sandbox`` serves it on 127.0.0.1 in a background thread.
"""

from .app import SandboxSettings, create_app
from .server import SandboxServer, serve, start_sandbox

__all__ = ["SandboxServer", "SandboxSettings", "create_app", "serve", "start_sandbox"]
