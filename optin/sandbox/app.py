"""ASGI stand-in for UPS's OAuth endpoints and the UPS.com sign-in pages.

``create_app`` returns a Starlette app that keeps every client, user, code and grant
in memory. It serves three groups of routes:

- ``/security/v1/oauth/{authorize,token,refresh}``: the OAuth endpoints, with UPS's
  paths, form-encoded request bodies and JSON error envelope
  ``{"response": {"errors": [{"code": ..., "message": ...}]}}``.
- ``/lasso/{signin,password,consent}``: the sign-in pages that the authorize
  endpoint redirects to, as plain HTML forms.
- ``/_sandbox/...``: a JSON control API for tests and demos (users, clients, faults,
  clock, request log, reset).

This module builds the app and routes requests. The handlers are in ``oauth``,
``signin`` and ``controls``, and the in-memory data is in ``state``.

The sandbox imports nothing from the rest of ``optin``, so that the product's client
and this stand-in are written separately and can catch each other's mistakes.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .controls import (
    add_fault,
    advance_clock,
    change_password,
    clear_faults,
    clear_requests,
    create_user,
    health,
    introspect,
    jwks,
    list_faults,
    list_grants,
    list_requests,
    register_client,
    reset,
)
from .errors import ControlError, OAuthError
from .oauth import (
    AUTHORIZE_PATH,
    REFRESH_PATH,
    TOKEN_PATH,
    authorize_endpoint,
    is_oauth_path,
    log_oauth_error,
    refresh_endpoint,
    token_endpoint,
)
from .requestlog import RequestLogMiddleware
from .settings import SandboxSettings
from .signin import (
    SIGNIN_PATH,
    consent_submit,
    password_submit,
    signin_form,
    signin_submit,
)
from .state import SandboxState, sandbox_state
from .tokens import pkce_challenge

# ``SandboxSettings``, ``sandbox_state`` and ``pkce_challenge`` are re-exported for
# callers that import them from this module.
__all__ = ["SandboxSettings", "create_app", "pkce_challenge", "sandbox_state"]

logger = logging.getLogger(__name__)


def _oauth_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    log_oauth_error(request, exc)
    return exc.to_response()


def _control_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    logger.info("%s %s failed: %s", request.method, request.url.path, exc.detail)
    return JSONResponse({"detail": exc.detail}, exc.status)


def _http_error_handler(request: Request, exc: Exception) -> Response:
    """Return 404 and 405 as UPS envelopes under /security, as JSON under /_sandbox."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if is_oauth_path(path):
        error = OAuthError(exc.status_code, f"10{exc.status_code}", exc.detail)
        response: Response = error.to_response()
    elif path.startswith("/_sandbox/"):
        response = JSONResponse({"detail": exc.detail}, exc.status_code)
    else:
        response = PlainTextResponse(exc.detail, exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _server_error_handler(request: Request, exc: Exception) -> Response:
    """Return an unexpected error as a 500 envelope under /security."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if is_oauth_path(request.url.path):
        return OAuthError(500, "10500", "Internal Server Error").to_response()
    return PlainTextResponse("Internal Server Error", 500)


def _routes() -> list[Route]:
    return [
        Route(AUTHORIZE_PATH, authorize_endpoint, methods=["GET"]),
        Route(TOKEN_PATH, token_endpoint, methods=["POST"]),
        Route(REFRESH_PATH, refresh_endpoint, methods=["POST"]),
        Route(SIGNIN_PATH, signin_form, methods=["GET"]),
        Route(SIGNIN_PATH, signin_submit, methods=["POST"]),
        Route("/lasso/password", password_submit, methods=["POST"]),
        Route("/lasso/consent", consent_submit, methods=["POST"]),
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/users", create_user, methods=["POST"]),
        Route("/_sandbox/users/{login}/password", change_password, methods=["POST"]),
        Route("/_sandbox/clients", register_client, methods=["POST"]),
        Route("/_sandbox/faults", add_fault, methods=["POST"]),
        Route("/_sandbox/faults", list_faults, methods=["GET"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/clock", advance_clock, methods=["POST"]),
        Route("/_sandbox/requests", list_requests, methods=["GET"]),
        Route("/_sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/_sandbox/grants", list_grants, methods=["GET"]),
        Route("/_sandbox/introspect", introspect, methods=["POST"]),
        Route("/_sandbox/jwks", jwks, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]


def create_app(settings: SandboxSettings | None = None) -> Starlette:
    """Create the sandbox app with a fresh state and a new RSA signing key."""
    state = SandboxState(settings or SandboxSettings())
    app = Starlette(
        routes=_routes(),
        middleware=[Middleware(RequestLogMiddleware, state=state)],
        exception_handlers={
            OAuthError: _oauth_error_handler,
            ControlError: _control_error_handler,
            HTTPException: _http_error_handler,
            Exception: _server_error_handler,
        },
    )
    app.state.sandbox = state
    return app
