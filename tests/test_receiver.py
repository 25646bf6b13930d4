"""The callback receiver served by uvicorn on loopback, in front of the sandbox."""

from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from optin import Manager, Settings
from optin.config import SANDBOX_REDIRECT_URI
from optin.lifecycle import State
from optin.receiver import SUPPORT_MESSAGE, create_receiver
from optin.serving import ThreadedServer
from tests.helpers import callback_for, create_user, free_port

COMPANY = "ACME-01"
# Seconds the sandbox delays the code exchange in the event-loop test.
TOKEN_DELAY = 2.0


@dataclasses.dataclass
class Receiver:
    manager: Manager
    url: str


@contextmanager
def serve_receiver(
    settings: Settings, sandbox_http: httpx.Client
) -> Iterator[Receiver]:
    """Serve a receiver on a free port that the sandbox accepts as redirect URI."""
    port = free_port()
    redirect_uri = f"http://127.0.0.1:{port}/callback"
    client = {
        "client_id": settings.client_id,
        "client_secret": settings.client_secret.reveal(),
        "redirect_uris": [SANDBOX_REDIRECT_URI, redirect_uri],
    }
    sandbox_http.post("/_sandbox/clients", json=client).raise_for_status()
    with (
        Manager(dataclasses.replace(settings, redirect_uri=redirect_uri)) as manager,
        ThreadedServer(create_receiver(manager), port=port) as server,
    ):
        manager.add_company(COMPANY, "Acme Ltd", actor="test")
        yield Receiver(manager, server.url)


@pytest.fixture
def receiver(settings: Settings, sandbox_http: httpx.Client) -> Iterator[Receiver]:
    with serve_receiver(settings, sandbox_http) as served:
        yield served


def signed_in(receiver: Receiver, sandbox_http: httpx.Client) -> str:
    """Return the callback URL of a fresh opt-in that the admin allowed."""
    login = create_user(sandbox_http)
    return callback_for(receiver.manager, sandbox_http, COMPANY, login)


def test_callback_page_authorized(
    receiver: Receiver, sandbox_http: httpx.Client
) -> None:
    callback_url = signed_in(receiver, sandbox_http)
    code = parse_qs(urlsplit(callback_url).query)["code"][0]

    page = httpx.get(callback_url)

    assert page.status_code == 200
    assert "<h1 id='outcome'>Authorized</h1>" in page.text
    assert f"company {COMPANY} is authorized" in page.text
    assert code not in page.text
    assert receiver.manager.get_company(COMPANY).state is State.AUTHORIZED


def test_callback_page_unknown_state(receiver: Receiver) -> None:
    page = httpx.get(f"{receiver.url}/callback?code=abc123&state=never-issued")

    assert page.status_code == 400
    assert "Opt-in not completed" in page.text
    text = html.unescape(page.text)
    assert "no authorization link has this callback's state" in text
    assert "begin a new opt-in" in text
    assert receiver.manager.get_company(COMPANY).state is State.UNAUTHORIZED


def test_callback_error_page_generic(
    settings: Settings,
    sandbox_http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The receiver logs a ClientRejected detail and shows the admin generic text."""
    other_app = dataclasses.replace(settings, client_id="other-app")
    with serve_receiver(other_app, sandbox_http) as receiver:
        callback_url = signed_in(receiver, sandbox_http)
        # The reset unregisters other-app, so the code exchange gets HTTP 401.
        sandbox_http.post("/_sandbox/reset").raise_for_status()
        caplog.set_level(logging.WARNING, logger="optin.receiver")

        page = httpx.get(callback_url)

    assert page.status_code == 502
    assert SUPPORT_MESSAGE in html.unescape(page.text)
    assert "OPTIN_CLIENT" not in page.text
    assert "HTTP 401" not in page.text
    warnings = [r for r in caplog.records if r.name == "optin.receiver"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "ClientRejected" in warnings[0].getMessage()
    assert "OPTIN_CLIENT_ID" in warnings[0].getMessage()


def test_callback_keeps_event_loop_free(
    receiver: Receiver, sandbox_http: httpx.Client
) -> None:
    """/health responds while a callback waits for a slow code exchange."""
    callback_url = signed_in(receiver, sandbox_http)
    sandbox_http.post(
        "/_sandbox/faults",
        json={"endpoint": "token", "delay": TOKEN_DELAY, "count": 1},
    ).raise_for_status()
    pages: list[httpx.Response] = []
    in_flight = threading.Thread(
        target=lambda: pages.append(httpx.get(callback_url, timeout=10))
    )
    in_flight.start()
    wait_until_fault_taken(sandbox_http, in_flight)

    started = time.monotonic()
    health = httpx.get(f"{receiver.url}/health", timeout=10)
    elapsed = time.monotonic() - started

    in_flight.join(timeout=10)
    assert health.status_code == 200
    assert elapsed < 1.0, f"/health took {elapsed:.2f} s during a callback"
    assert not in_flight.is_alive()
    assert [page.status_code for page in pages] == [200]
    assert receiver.manager.get_company(COMPANY).state is State.AUTHORIZED


def wait_until_fault_taken(http: httpx.Client, worker: threading.Thread) -> None:
    """Wait until the sandbox has read the code exchange and started its delay."""
    deadline = time.monotonic() + 5
    while http.get("/_sandbox/faults").json():
        assert worker.is_alive(), "the callback finished before the exchange"
        assert time.monotonic() < deadline, "the code exchange never reached UPS"
        time.sleep(0.01)
