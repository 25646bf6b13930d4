"""Callback URLs that must not complete an opt-in, and the ones that must.

Each test signs in through the loopback sandbox's pages, so the callback URLs
carry real codes: standard base64 that always contains ``+``, ``/`` and ``=``.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import pytest
from conftest import make_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from optin import Manager, Settings
from optin.callback import parse_callback
from optin.config import SANDBOX_REDIRECT_URI
from optin.errors import (
    CallbackError,
    ExpiredState,
    MalformedCallback,
    ReplayedCallback,
    SupersededState,
    TransientError,
    UnknownState,
)
from optin.lifecycle import State
from optin.sandbox import SandboxServer
from optin.signin import sign_in
from tests.helpers import MovableClock

ACTOR = "callback-test"
COMPANY = "ACME-01"
LOGIN = "admin-acme"
PASSWORD = "acme-password-1"
TOKEN_PATH = "/security/v1/oauth/token"


@pytest.fixture
def admin(sandbox_http: httpx.Client) -> str:
    """Create the company admin's UPS.com user in the sandbox and return its login."""
    sandbox_http.post(
        "/_sandbox/users",
        json={"username": LOGIN, "email": "admin@acme.test", "password": PASSWORD},
    ).raise_for_status()
    return LOGIN


def token_requests(http: httpx.Client) -> int:
    records = http.get("/_sandbox/requests").json()
    return sum(1 for record in records if record["path"] == TOKEN_PATH)


def query_value(url: str, name: str) -> str:
    return parse_qs(urlsplit(url).query)[name][0]


def begin(manager: Manager, company_id: str = COMPANY) -> str:
    """Add the company if needed, begin an opt-in and return the link's URL."""
    if manager.store.get_company(company_id) is None:
        manager.add_company(company_id, "Acme Ltd", actor=ACTOR)
    return manager.begin_opt_in(company_id, actor=ACTOR).url


def snapshot(manager: Manager, company_id: str = COMPANY) -> tuple[object, ...]:
    company = manager.get_company(company_id)
    return (
        company.state,
        company.version,
        len(manager.get_history(company_id)),
        manager.store.count_grants(company_id),
    )


def authorize(manager: Manager, http: httpx.Client) -> str:
    """Take the company through a full opt-in and return the callback URL used."""
    url = sign_in(http, begin(manager), LOGIN, PASSWORD)
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"
    return url


# -- state values that were never issued, or no longer open --------------------


def test_callback_forged_state(
    manager: Manager, sandbox_http: httpx.Client, admin: str
) -> None:
    url = sign_in(sandbox_http, begin(manager), admin, PASSWORD)
    state = query_value(url, "state")
    forged_state = state[:-1] + ("A" if state[-1] != "A" else "B")
    forged = url.replace(f"state={state}", f"state={forged_state}")
    before = snapshot(manager)

    with pytest.raises(UnknownState, match="forged, mistyped"):
        manager.complete_opt_in(forged, actor=ACTOR)

    assert snapshot(manager) == before
    assert token_requests(sandbox_http) == 0
    # The genuine link is still open.
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"


def test_callback_state_of_other_database(
    manager: Manager,
    sandbox: SandboxServer,
    sandbox_http: httpx.Client,
    admin: str,
    tmp_path: Path,
) -> None:
    begin(manager)
    other_settings = make_settings(tmp_path / "other", sandbox.url)
    with Manager(other_settings) as other:
        url = sign_in(sandbox_http, begin(other), admin, PASSWORD)
    before = snapshot(manager)

    with pytest.raises(UnknownState, match="another database"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert snapshot(manager) == before
    assert token_requests(sandbox_http) == 0


def test_callback_expired_link(
    settings: Settings, sandbox_http: httpx.Client, admin: str
) -> None:
    clock = MovableClock()
    with Manager(settings, clock=clock) as manager:
        url = sign_in(sandbox_http, begin(manager), admin, PASSWORD)
        clock.advance(settings.link_lifetime + 1)

        with pytest.raises(ExpiredState, match="expired at"):
            manager.complete_opt_in(url, actor=ACTOR)

        assert manager.get_company(COMPANY).state is State.UNAUTHORIZED
        last = manager.get_history(COMPANY)[-1]
        assert last.trigger == "cancel"
        assert last.from_state == "pending"
        assert last.reason == "the authorization link expired"
        with pytest.raises(CallbackError, match=r"closed \(status expired\)"):
            manager.complete_opt_in(url, actor=ACTOR)
        assert token_requests(sandbox_http) == 0


def test_expire_links_cancels_to_origin(
    settings: Settings, sandbox_http: httpx.Client, admin: str
) -> None:
    clock = MovableClock()
    with Manager(settings, clock=clock) as manager:
        authorize(manager, sandbox_http)
        manager.record_password_change(COMPANY, actor=ACTOR)
        url = sign_in(sandbox_http, begin(manager), admin, PASSWORD)
        clock.advance(settings.link_lifetime - 1)
        assert manager.expire_links() == []
        clock.advance(2)

        assert manager.expire_links() == [COMPANY]

        assert manager.get_company(COMPANY).state is State.INVALIDATED
        with pytest.raises(CallbackError, match=r"closed \(status expired\)"):
            manager.complete_opt_in(url, actor=ACTOR)


def test_callback_superseded_link(
    manager: Manager, sandbox_http: httpx.Client, admin: str
) -> None:
    first_link = begin(manager)
    second_link = begin(manager)
    first_url = sign_in(sandbox_http, first_link, admin, PASSWORD)
    before = snapshot(manager)

    with pytest.raises(SupersededState, match="replaced by a newer one"):
        manager.complete_opt_in(first_url, actor=ACTOR)

    assert snapshot(manager) == before
    assert token_requests(sandbox_http) == 0
    second_url = sign_in(sandbox_http, second_link, admin, PASSWORD)
    assert manager.complete_opt_in(second_url, actor=ACTOR).outcome == "authorized"


# -- replays ---------------------------------------------------------------------


def test_callback_replay_same_url(
    manager: Manager, sandbox_http: httpx.Client, admin: str
) -> None:
    url = authorize(manager, sandbox_http)
    before = snapshot(manager)
    grant = manager.store.get_grant(COMPANY)

    result = manager.complete_opt_in(url, actor=ACTOR)

    assert result.outcome == "replayed"
    assert result.company.state is State.AUTHORIZED
    assert snapshot(manager) == before
    assert manager.store.get_grant(COMPANY) == grant
    assert token_requests(sandbox_http) == 1


def test_callback_replay_other_code(
    manager: Manager, sandbox_http: httpx.Client, admin: str
) -> None:
    link = begin(manager)
    url = sign_in(sandbox_http, link, admin, PASSWORD)
    manager.complete_opt_in(url, actor=ACTOR)
    # Signing in again through the same link yields a second, valid code.
    second_url = sign_in(sandbox_http, link, admin, PASSWORD)
    assert query_value(second_url, "code") != query_value(url, "code")
    before = snapshot(manager)

    with pytest.raises(ReplayedCallback, match="already used"):
        manager.complete_opt_in(second_url, actor=ACTOR)

    assert snapshot(manager) == before
    assert token_requests(sandbox_http) == 1


def test_callback_while_exchanging(
    settings: Settings, sandbox_http: httpx.Client, admin: str
) -> None:
    """A second receiver gets the same callback while the first is exchanging."""
    with Manager(settings) as first, Manager(settings) as second:
        url = sign_in(sandbox_http, begin(first), admin, PASSWORD)
        sandbox_http.post(
            "/_sandbox/faults", json={"endpoint": "token", "delay": 1.0, "count": 1}
        ).raise_for_status()
        outcomes: list[str] = []
        worker = threading.Thread(
            target=lambda: outcomes.append(
                first.complete_opt_in(url, actor=ACTOR).outcome
            )
        )
        worker.start()
        pending = second.store.get_pending(query_value(url, "state"))
        deadline = time.monotonic() + 5
        while pending is not None and pending.status != "exchanging":
            assert time.monotonic() < deadline, "the first receiver never claimed"
            time.sleep(0.02)
            pending = second.store.get_pending(query_value(url, "state"))

        with pytest.raises(TransientError, match="being completed"):
            second.complete_opt_in(url, actor=ACTOR)

        worker.join(10)
        assert outcomes == ["authorized"]
        assert second.complete_opt_in(url, actor=ACTOR).outcome == "replayed"
        assert token_requests(sandbox_http) == 1


# -- malformed URLs --------------------------------------------------------------

CALLBACK = SANDBOX_REDIRECT_URI


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (CALLBACK, "no state"),
        (f"{CALLBACK}?code=abc%2B%2F%3D", "no state"),
        (f"{CALLBACK}?state=&code=abc", "no state"),
        (f"{CALLBACK}?state=abc", "neither code nor error"),
        (f"{CALLBACK}?state=abc&code=&error=", "neither code nor error"),
        (f"{CALLBACK}?state=abc&state=abd&code=xyz", "repeats state"),
        (f"{CALLBACK}?state=abc&code=xyz&code=xy", "repeats code"),
        (f"{CALLBACK}?state=abc&error=access_denied&error=x", "repeats error"),
    ],
    ids=[
        "empty",
        "blank",
        "no-query",
        "no-state",
        "empty-state",
        "no-code-or-error",
        "empty-code-and-error",
        "repeated-state",
        "repeated-code",
        "repeated-error",
    ],
)
def test_callback_malformed(
    manager: Manager, sandbox_http: httpx.Client, url: str, message: str
) -> None:
    begin(manager)
    before = snapshot(manager)

    with pytest.raises(MalformedCallback, match=message):
        manager.complete_opt_in(url, actor=ACTOR)

    assert snapshot(manager) == before
    assert token_requests(sandbox_http) == 0


# -- access_denied ---------------------------------------------------------------


def move_to(manager: Manager, http: httpx.Client, state: State) -> None:
    """Bring the new company to ``state`` through the public API."""
    manager.add_company(COMPANY, "Acme Ltd", actor=ACTOR)
    if state is State.INVALIDATED:
        authorize(manager, http)
        manager.record_password_change(COMPANY, actor=ACTOR)
    elif state is State.OPTED_OUT:
        begin(manager)
        manager.opt_out(COMPANY, actor=ACTOR, confirm=True)
    assert manager.get_company(COMPANY).state is state


@pytest.mark.parametrize(
    "origin", [State.UNAUTHORIZED, State.INVALIDATED, State.OPTED_OUT]
)
def test_callback_access_denied(
    manager: Manager, sandbox_http: httpx.Client, admin: str, origin: State
) -> None:
    move_to(manager, sandbox_http, origin)
    url = sign_in(sandbox_http, begin(manager), admin, PASSWORD, allow=False)
    assert query_value(url, "error") == "access_denied"
    sandbox_http.delete("/_sandbox/requests").raise_for_status()

    result = manager.complete_opt_in(url, actor=ACTOR)

    assert result.outcome == "cancelled"
    assert result.company.state is origin
    assert "access_denied" in result.message
    last = manager.get_history(COMPANY)[-1]
    assert last.trigger == "cancel"
    assert last.from_state == "pending"
    assert last.to_state == origin.value
    assert last.reason is not None
    assert "access_denied" in last.reason
    assert manager.store.count_grants(COMPANY) == 0
    assert token_requests(sandbox_http) == 0


# -- codes with +, / and = -----------------------------------------------------------


def reencode(url: str, form: str) -> str:
    """Rewrite a callback URL with its code percent-encoded, raw, or as a bare query."""
    code = query_value(url, "code")
    state = query_value(url, "state")
    if form == "percent-encoded":
        return f"{CALLBACK}?code={quote(code, safe='')}&scope=read&state={state}"
    if form == "raw":
        return f"{CALLBACK}?code={code}&scope=read&state={state}"
    return f"state={state}&code={code}"


@pytest.mark.parametrize("form", ["percent-encoded", "raw", "bare-query"])
def test_callback_code_encodings(
    manager: Manager, sandbox_http: httpx.Client, admin: str, form: str
) -> None:
    url = sign_in(sandbox_http, begin(manager), admin, PASSWORD)
    code = query_value(url, "code")
    assert "+" in code
    assert "/" in code
    assert code.endswith("=")

    result = manager.complete_opt_in(reencode(url, form), actor=ACTOR)

    assert result.outcome == "authorized"
    assert token_requests(sandbox_http) == 1


base64_codes = st.binary(min_size=1, max_size=96).map(
    lambda raw: base64.b64encode(raw).decode("ascii")
)
state_values = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    min_size=1,
    max_size=64,
)


@settings(max_examples=200, deadline=None)
@given(code=base64_codes, state=state_values)
def test_parse_callback_code_roundtrip(code: str, state: str) -> None:
    encoded = f"{CALLBACK}?{urlencode({'code': code, 'state': state})}"
    raw = f"{CALLBACK}?code={code}&state={state}"
    for url in (encoded, raw, f"code={code}&state={state}"):
        params = parse_callback(url)
        assert params.code is not None
        assert params.code.reveal() == code
        assert params.state == state
        assert params.error is None
