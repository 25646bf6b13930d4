"""Open a console on the configured database, with a callback receiver if possible."""

from __future__ import annotations

import getpass
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from optin.api import Manager
from optin.config import Settings
from optin.console.app import Console
from optin.receiver import RECEIVER_SERVICE
from optin.serving import check_loopback

logger = logging.getLogger(__name__)


def open_console(
    db_path: Path | str | None = None,
    actor: str | None = None,
    start_receiver: bool = True,
    **settings: Any,
) -> Console:
    """Open a console on ``db_path`` with settings from ``Settings.load``.

    The default settings are the loopback sandbox's. With ``start_receiver``,
    a callback receiver serves the redirect URI's port on loopback. When it
    cannot start (port in use, or the redirect URI is not a loopback http
    address), the console shows why and the analyst pastes callback URLs.
    ``console.close()`` stops the receiver and closes the database.
    """
    loaded = Settings.load(db_path=db_path, **settings)
    manager = Manager(loaded)
    receiver_url, note = None, "No callback receiver was started for this console."
    stop = None
    shared = False
    if start_receiver:
        stop, note = _start_receiver(loaded)
        shared = stop is None and _receiver_serves(loaded)
        if shared:
            note = (
                f"Another console's callback receiver at {loaded.redirect_uri} "
                "completes opt-ins into this database; use Check status to see "
                "them."
            )
        receiver_url = loaded.redirect_uri if stop is not None or shared else None

    console = Console(manager, actor or _default_actor(), receiver_url)
    console.on_close(manager.close)
    if stop is not None:
        console.on_close(stop)
    console.show_message(note, "info" if receiver_url is not None else "error")
    return console


def _receiver_serves(settings: Settings) -> bool:
    """Return whether an optin receiver for this database listens on the port.

    Voila keeps a closed tab's kernel, and its receiver, running, so a second
    console often finds the port taken by a receiver that serves it anyway.
    """
    uri = urlsplit(settings.redirect_uri)
    try:
        answer = httpx.get(f"http://{uri.hostname}:{uri.port}/health", timeout=1.0)
        body = answer.json()
    except (httpx.HTTPError, ValueError):
        return False
    return (
        isinstance(body, dict)
        and body.get("service") == RECEIVER_SERVICE
        and body.get("database") == str(settings.db_path.resolve())
    )


def _start_receiver(settings: Settings) -> tuple[Any, str]:
    """Start a receiver on the redirect URI's port; return (stop callback, note)."""
    uri = urlsplit(settings.redirect_uri)
    try:
        check_loopback(uri.hostname or "", allow_remote=False)
        if uri.scheme != "http" or uri.port is None:
            raise ValueError("the redirect URI is not http with a port")
    except ValueError:
        return None, (
            f"The redirect URI {settings.redirect_uri} is not a loopback http "
            "address with a port, so this console started no callback receiver. "
            "Paste each callback URL into the company's panel and click Complete."
        )
    try:
        return _serve_receiver(settings, uri.port), (
            f"The callback receiver listens at {settings.redirect_uri}; it "
            "completes opt-ins when admins allow access at UPS.com."
        )
    except OSError as exc:
        logger.warning("callback receiver not started on port %s: %s", uri.port, exc)
        return None, (
            f"Port {uri.port} of the redirect URI {settings.redirect_uri} is in use "
            f"({exc.strerror or exc}), so this console started no callback "
            "receiver. If another console's receiver serves this database, Check "
            "status shows its completions; otherwise paste each callback URL into "
            "the company's panel and click Complete."
        )
    except ImportError as exc:
        return None, f"{exc}. Until then, paste each callback URL and click Complete."


def _serve_receiver(settings: Settings, port: int) -> Any:
    """Start the receiver with its own Manager; return a function that stops both."""
    from optin.receiver import create_receiver
    from optin.serving import ThreadedServer

    manager = Manager(settings)
    try:
        server = ThreadedServer(create_receiver(manager), port=port).start()
    except BaseException:
        manager.close()
        raise
    logger.info("callback receiver listening on %s", server.url)

    def stop() -> None:
        server.stop()
        manager.close()

    return stop


def _default_actor() -> str:
    if os.environ.get("OPTIN_ACTOR"):
        return os.environ["OPTIN_ACTOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No user name in the environment or the password database.
        return "analyst"
