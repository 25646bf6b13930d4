"""Small helpers shared by the tests: sandbox users and a full sign-in."""

from __future__ import annotations

import itertools
import socket
from datetime import UTC, datetime, timedelta

import httpx

from optin import Manager
from optin.models import CallbackResult
from optin.signin import sign_in

_numbers = itertools.count(1)


def create_user(sandbox_http: httpx.Client, password: str = "pw-Start-1") -> str:
    """Create a fresh sandbox UPS.com user and return its username."""
    username = f"admin{next(_numbers)}"
    response = sandbox_http.post(
        "/_sandbox/users",
        json={
            "username": username,
            "email": f"{username}@example.com",
            "password": password,
        },
    )
    response.raise_for_status()
    return username


def callback_for(
    manager: Manager,
    sandbox_http: httpx.Client,
    company_id: str,
    login: str,
    password: str = "pw-Start-1",
    allow: bool = True,
) -> str:
    """Begin an opt-in and sign in at the sandbox; return the callback URL."""
    link = manager.begin_opt_in(company_id, actor="test")
    return sign_in(sandbox_http, link.url, login, password, allow=allow)


def authorize(
    manager: Manager,
    sandbox_http: httpx.Client,
    company_id: str,
    login: str | None = None,
    password: str = "pw-Start-1",
) -> CallbackResult:
    """Take a company from its current state to authorized through the sandbox."""
    login = login or create_user(sandbox_http, password)
    url = callback_for(manager, sandbox_http, company_id, login, password)
    return manager.complete_opt_in(url, actor="test")


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MovableClock:
    """A clock for ``Manager(clock=...)`` that a test moves forward by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
