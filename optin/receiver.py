"""The callback receiver: a small web endpoint behind the registered redirect URI.

UPS sends the admin's browser to ``redirect_uri?code=...&state=...``; the
receiver completes the opt-in into the same database and shows the admin a
short page. It never shows the code, the state or a token.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Final
from urllib.parse import urlsplit

from optin import errors
from optin.api import Manager
from optin.serving import require_extra

logger = logging.getLogger(__name__)

# Shown for every error except UsageError, whose messages tell the admin what
# to do. The other messages name settings and environment variables that are
# for operators, so they go to the log instead.
SUPPORT_MESSAGE: Final = (
    "The opt-in could not be completed because of a problem on our side; the "
    "support team has been told. Please try the link again later or ask for a "
    "new one."
)
NOT_COMPLETED: Final = "Opt-in not completed"


def create_receiver(manager: Manager, actor: str = "callback-receiver") -> Any:
    """Build the Starlette app that completes opt-ins at the redirect URI's path."""
    require_extra("starlette")
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    path = urlsplit(manager.settings.redirect_uri).path or "/"

    # A plain def: Starlette runs it in its thread pool, because the code
    # exchange blocks on SQLite and on UPS. Manager serializes its SQLite
    # connection with a lock, so concurrent callbacks are safe.
    def callback(request: Request) -> Any:
        try:
            result = manager.complete_opt_in(str(request.url), actor=actor)
        except errors.UsageError as exc:
            logger.warning("callback not completed: %s", exc)
            return _page(NOT_COMPLETED, str(exc), 400)
        except errors.OptinError as exc:
            logger.warning("callback not completed: %s: %s", type(exc).__name__, exc)
            return _page(NOT_COMPLETED, SUPPORT_MESSAGE, 502)
        return _page(_TITLES[result.outcome], result.message, 200)

    async def health(request: Request) -> JSONResponse:
        # The database lets a second console on this machine see that this
        # receiver already completes opt-ins into its database.
        return JSONResponse(
            {
                "status": "ok",
                "service": RECEIVER_SERVICE,
                "database": str(manager.store.path.resolve()),
            }
        )

    return Starlette(routes=[Route(path, callback), Route("/health", health)])


RECEIVER_SERVICE = "optin-receiver"
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
