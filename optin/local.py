"""Local set-up for the sandbox environment: seeded UPS.com users, an
in-process sandbox when none runs, and demo companies for an empty database.

Only the CLI's ``sandbox`` command and the notebooks use this module; it
does nothing unless the settings point at the loopback sandbox.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from optin.api import Manager
from optin.config import Settings
from optin.serving import check_loopback

logger = logging.getLogger(__name__)

DEFAULT_COMPANIES: Final = Path("data/companies.csv")
# Password of the sandbox's UPS.com users made from the companies CSV; the
# sandbox opens nothing real.
SANDBOX_ADMIN_PASSWORD: Final = "sandbox"  # noqa: S105


def sandbox_users(admins_csv: Path, password: str) -> list[tuple[str, str, str]]:
    """Return (username, email, password) for each admin in the CSV file."""
    if not admins_csv.exists():
        return []
    with admins_csv.open(newline="", encoding="utf-8") as handle:
        emails = [row["admin_email"] for row in csv.DictReader(handle)]
    return [
        (f"{email.split('@')[0]}-{number}", email, password)
        for number, email in enumerate(dict.fromkeys(e for e in emails if e), 1)
    ]


def sandbox_running(base_url: str, timeout: float = 2.0) -> bool:
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/_sandbox/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def ensure_sandbox(
    settings: Settings | None = None, admins_csv: Path = DEFAULT_COMPANIES
) -> tuple[Any, str]:
    """Start a sandbox in this process when the settings name one that is down.

    Returns (the server or None, a note for the user). Nothing starts unless
    the environment is ``sandbox`` and the base URL is a loopback http
    address with a port.
    """
    settings = settings or Settings.load()
    url = urlsplit(settings.base_url)
    if settings.environment != "sandbox" or url.scheme != "http" or not url.port:
        return None, f"Using UPS at {settings.base_url}; no sandbox was started."
    try:
        check_loopback(url.hostname or "", allow_remote=False)
    except ValueError:
        return None, f"{settings.base_url} is not on loopback; no sandbox was started."
    if sandbox_running(settings.base_url):
        return None, f"A UPS sandbox already runs at {settings.base_url}."

    from optin.sandbox import SandboxSettings, start_sandbox

    users = sandbox_users(admins_csv, SANDBOX_ADMIN_PASSWORD)
    sandbox_settings = SandboxSettings(
        redirect_uris=[settings.redirect_uri], users=users
    )
    server = start_sandbox(port=url.port, settings=sandbox_settings)
    logger.info("started a UPS sandbox at %s", server.url)
    return server, (
        f"Started a UPS sandbox at {server.url} in this process, with "
        f"{len(users)} UPS.com users: sign in with an admin email from "
        f"{admins_csv} and the password {SANDBOX_ADMIN_PASSWORD!r}."
    )


def import_if_empty(
    manager: Manager, actor: str, companies_csv: Path = DEFAULT_COMPANIES
) -> int:
    """Import the demo companies when the database has none; return how many."""
    if manager.list_companies() or not companies_csv.exists():
        return 0
    return manager.import_companies(
        companies_csv, actor=actor, reason="example companies for the sandbox"
    )
