"""The callback receiver: a small web endpoint behind the registered redirect URI.

UPS sends the admin's browser to ``redirect_uri?code=...&state=...``; the
receiver completes the opt-in into the same database and shows the admin a
short page. It never shows the code, the state or a token.
"""

from __future__ import annotations

import html
import logging
from typing import Any
from urllib.parse import urlsplit

from optin import errors
from optin.api import Manager
from optin.serving import require_extra

logger = logging.getLogger(__name__)


def create_receiver(manager: Manager, actor: str = "callback-receiver") -> Any:
    """Build the Starlette app that completes opt-ins at the redirect URI's path."""
    require_extra("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    path = urlsplit(manager.settings.redirect_uri).path or "/"

    async def callback(request: Request) -> Any:
        try:
            result = manager.complete_opt_in(str(request.url), actor=actor)
        except errors.OptinError as exc:
            logger.warning("callback not completed: %s", exc)
            status = 400 if isinstance(exc, errors.UsageError) else 502
            return _page("Opt-in not completed", str(exc), status)
        return _page(_TITLES[result.outcome], result.message, 200)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route(path, callback), Route("/health", health)])


_TITLES = {
    "authorized": "Authorized",
    "replayed": "Authorized",
    "cancelled": "Opt-in cancelled",
}


def _page(title: str, message: str, status: int) -> Any:
    from starlette.responses import HTMLResponse

    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1 id='outcome'>{html.escape(title)}</h1>"
        f"<p id='message'>{html.escape(message)}</p>"
        "<p>You can close this tab.</p></body></html>"
    )
    return HTMLResponse(body, status_code=status)
