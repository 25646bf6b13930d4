"""UPS error responses, timeouts and lost responses, and what each leaves behind.

The loopback sandbox produces every failure here (its fault injection, client
registry, user passwords and clock), except malformed 200 responses. The
sandbox never sends those, so their tests use httpx.MockTransport.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from conftest import make_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from optin import Manager, Settings
from optin.config import SANDBOX_CLIENT_SECRET, SANDBOX_REDIRECT_URI
from optin.errors import (
    Blocked,
    CallbackError,
    ClientRejected,
    CodeRejected,
    GrantRevoked,
    InvalidRequest,
    OptinError,
    RateLimited,
    ServerError,
    UPSConnectionError,
    UPSError,
    UPSTimeout,
)
from optin.lifecycle import State
from optin.sandbox import SandboxServer
from optin.secret import Secret
from optin.signin import sign_in
from optin.ups import TokenSet, UPSClient

ACTOR = "error-test"
COMPANY = "ACME-01"
TOKEN_PATH = "/security/v1/oauth/token"
REFRESH_PATH = "/security/v1/oauth/refresh"


def login_of(company_id: str) -> str:
    return f"admin-{company_id.lower()}"


def password_of(company_id: str) -> str:
    return f"{login_of(company_id)}-password"


def add_user(http: httpx.Client, company_id: str) -> None:
    login = login_of(company_id)
    http.post(
        "/_sandbox/users",
        json={
            "username": login,
            "email": f"{login}@example.test",
            "password": password_of(company_id),
        },
    ).raise_for_status()


def begin(manager: Manager, http: httpx.Client, company_id: str = COMPANY) -> str:
    """Add the company and its sandbox user if needed, and return a new link's URL."""
    if manager.store.get_company(company_id) is None:
        manager.add_company(company_id, f"{company_id} Ltd", actor=ACTOR)
        add_user(http, company_id)
    return manager.begin_opt_in(company_id, actor=ACTOR).url


def callback_url(
    manager: Manager, http: httpx.Client, company_id: str = COMPANY
) -> str:
    link = begin(manager, http, company_id)
    return sign_in(http, link, login_of(company_id), password_of(company_id))


def authorize(manager: Manager, http: httpx.Client, company_id: str = COMPANY) -> None:
    url = callback_url(manager, http, company_id)
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"


def add_fault(http: httpx.Client, **fault: object) -> None:
    http.post("/_sandbox/faults", json={"count": 1, **fault}).raise_for_status()


def requests_to(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    return [r for r in http.get("/_sandbox/requests").json() if r["path"] == path]


def snapshot(manager: Manager, company_id: str = COMPANY) -> tuple[object, ...]:
    company = manager.get_company(company_id)
    return (
        company.state,
        company.version,
        len(manager.get_history(company_id)),
        manager.store.get_grant(company_id),
    )


def lease_owner(settings: Settings, company_id: str = COMPANY) -> str | None:
    with sqlite3.connect(settings.db_path) as conn:
        row = conn.execute(
            "SELECT lease_owner FROM grants WHERE company_id = ?", (company_id,)
        ).fetchone()
    assert row is not None, f"{company_id} holds no tokens"
    return row[0]


def set_client_blocked(http: httpx.Client, blocked: bool) -> None:
    """Re-register the sandbox's default client, blocked or not."""
    http.post(
        "/_sandbox/clients",
        json={
            "client_id": "optin-sandbox",
            "client_secret": SANDBOX_CLIENT_SECRET,
            "redirect_uris": [SANDBOX_REDIRECT_URI],
            "blocked": blocked,
        },
    ).raise_for_status()


# -- 400: the code or the grant is dead ------------------------------------------


def test_exchange_bad_code_cancels(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    url = callback_url(manager, sandbox_http)
    code = url.split("code=")[1].split("&")[0]
    forged = url.replace(code, "Zm9yZ2VkK2NvZGUvPT0%3D")

    with pytest.raises(CodeRejected, match=r"HTTP 400 .*Invalid Authorization Code"):
        manager.complete_opt_in(forged, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.UNAUTHORIZED
    last = manager.get_history(COMPANY)[-1]
    assert last.trigger == "cancel"
    assert last.reason is not None
    assert "UPS rejected the authorization code" in last.reason
    assert manager.store.count_grants(COMPANY) == 0
    with pytest.raises(CallbackError, match=r"closed \(status failed\)"):
        manager.complete_opt_in(url, actor=ACTOR)


def test_exchange_expired_code_cancels(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    authorize(manager, sandbox_http)
    manager.record_password_change(COMPANY, actor=ACTOR)
    url = callback_url(manager, sandbox_http)
    # The sandbox's codes live 300 s on its own clock.
    sandbox_http.post("/_sandbox/clock", json={"advance": 301}).raise_for_status()

    with pytest.raises(CodeRejected, match="Authorization Code Expired"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.INVALIDATED


def test_refresh_dead_grant_invalidates(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    authorize(manager, sandbox_http)
    sandbox_http.post(
        f"/_sandbox/users/{login_of(COMPANY)}/password", json={"password": "new-pw"}
    ).raise_for_status()

    with pytest.raises(GrantRevoked, match=r"HTTP 400 .*Invalid Refresh Token"):
        manager.refresh(COMPANY, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.INVALIDATED
    assert manager.store.count_grants(COMPANY) == 0
    last = manager.get_history(COMPANY)[-1]
    assert last.trigger == "invalidate"
    assert last.details["ups_status"] == 400
    assert last.details["ups_code"] == "10400"


# -- 401 and 403: the client is at fault, no company is -------------------------


def test_refresh_wrong_secret_keeps_tokens(
    manager: Manager, sandbox: SandboxServer, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    authorize(manager, sandbox_http)
    before = snapshot(manager)
    wrong = make_settings(tmp_path, sandbox.url, client_secret="wrong-secret-7f3a9c")

    with (
        Manager(wrong) as misconfigured,
        pytest.raises(ClientRejected, match=r"HTTP 401 .*OPTIN_CLIENT_SECRET") as e,
    ):
        misconfigured.refresh(COMPANY, actor=ACTOR)

    assert "wrong-secret-7f3a9c" not in str(e.value)
    assert snapshot(manager) == before
    assert lease_owner(manager.settings) is None
    manager.refresh(COMPANY, actor=ACTOR)
    assert manager.get_company(COMPANY).state is State.AUTHORIZED


def test_exchange_unknown_client_retryable(
    manager: Manager, sandbox: SandboxServer, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    url = callback_url(manager, sandbox_http)
    # A database refuses settings of another client id, so the sandbox
    # rejects this one exchange with its "ClientId is Invalid" 401 instead.
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "token", "status": 401, "count": 1}
    ).raise_for_status()

    with pytest.raises(ClientRejected, match="HTTP 401"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.PENDING
    result = manager.complete_opt_in(url, actor=ACTOR)
    assert result.outcome == "authorized"
    statuses = [r["status"] for r in requests_to(sandbox_http, TOKEN_PATH)]
    assert statuses == [401, 200]


def test_refresh_blocked_keeps_tokens(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    authorize(manager, sandbox_http)
    before = snapshot(manager)
    set_client_blocked(sandbox_http, True)

    with pytest.raises(Blocked, match=r"HTTP 403 .*Blocked Merchant"):
        manager.refresh(COMPANY, actor=ACTOR)

    assert snapshot(manager) == before
    assert lease_owner(manager.settings) is None


def test_exchange_blocked_retryable(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    url = callback_url(manager, sandbox_http)
    set_client_blocked(sandbox_http, True)

    with pytest.raises(Blocked, match="not retryable"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.PENDING
    set_client_blocked(sandbox_http, False)
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"


# -- 429 and 5xx: try again later --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (429, RateLimited, "HTTP 429 .*rate limiting"),
        (500, ServerError, "HTTP 500 .*tokens are kept"),
        (503, ServerError, "HTTP 503 .*tokens are kept"),
    ],
)
def test_refresh_transient_keeps_tokens(
    manager: Manager,
    sandbox_http: httpx.Client,
    status: int,
    error: type[UPSError],
    message: str,
) -> None:
    authorize(manager, sandbox_http)
    before = snapshot(manager)
    add_fault(sandbox_http, endpoint="refresh", status=status)

    with pytest.raises(error, match=message):
        manager.refresh(COMPANY, actor=ACTOR)

    assert snapshot(manager) == before
    assert lease_owner(manager.settings) is None
    manager.refresh(COMPANY, actor=ACTOR)
    assert manager.get_company(COMPANY).version == before[1] + 1


def test_exchange_rate_limited_retryable(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    url = callback_url(manager, sandbox_http)
    add_fault(sandbox_http, endpoint="token", status=429)

    with pytest.raises(RateLimited, match="HTTP 429"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.PENDING
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"
    statuses = [r["status"] for r in requests_to(sandbox_http, TOKEN_PATH)]
    assert statuses == [429, 200]


def test_exchange_server_error_closes_link(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    """After a 5xx UPS may have used the code, so the link is not retried."""
    url = callback_url(manager, sandbox_http)
    add_fault(sandbox_http, endpoint="token", status=503)

    with pytest.raises(ServerError, match="not resent"):
        manager.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.PENDING
    with pytest.raises(CallbackError, match=r"closed \(status failed\)"):
        manager.complete_opt_in(url, actor=ACTOR)
    authorize(manager, sandbox_http)
    assert manager.get_company(COMPANY).state is State.AUTHORIZED


# -- timeouts and lost responses -----------------------------------------------------


def test_refresh_timeout_keeps_tokens(
    manager: Manager, sandbox: SandboxServer, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    authorize(manager, sandbox_http)
    before = snapshot(manager)
    add_fault(sandbox_http, endpoint="refresh", delay=1.5)
    impatient = make_settings(tmp_path, sandbox.url, timeout=0.5)

    with (
        Manager(impatient) as worker,
        pytest.raises(UPSTimeout, match=r"timed out after 0\.5 s"),
    ):
        worker.refresh(COMPANY, actor=ACTOR)

    assert snapshot(manager) == before
    assert lease_owner(manager.settings) is None


def test_exchange_timeout_closes_link(
    manager: Manager, sandbox: SandboxServer, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    url = callback_url(manager, sandbox_http)
    add_fault(sandbox_http, endpoint="token", delay=1.5)
    impatient = make_settings(tmp_path, sandbox.url, timeout=0.5)

    with (
        Manager(impatient) as receiver,
        pytest.raises(UPSTimeout, match="begin a new opt-in"),
    ):
        receiver.complete_opt_in(url, actor=ACTOR)

    assert manager.get_company(COMPANY).state is State.PENDING
    assert manager.store.count_grants(COMPANY) == 0
    with pytest.raises(CallbackError, match=r"closed \(status failed\)"):
        manager.complete_opt_in(url, actor=ACTOR)


def test_refresh_lost_response_kills_grant(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    """A refresh whose response is lost leaves a dead token in the database.

    UPS rotates the refresh token when it accepts a refresh, and the token sent
    is dead from then on. When the connection drops after UPS committed the
    rotation, the client never sees the new pair and keeps the old one, which
    is the best it can do. The next refresh then gets 400 "Invalid Refresh
    Token" and the company is invalidated, needing a new opt-in.
    """
    authorize(manager, sandbox_http)
    before = snapshot(manager)
    add_fault(sandbox_http, endpoint="refresh", drop_after_commit=True)

    with pytest.raises(UPSConnectionError, match="RemoteProtocolError"):
        manager.refresh(COMPANY, actor=ACTOR)

    assert snapshot(manager) == before
    assert lease_owner(manager.settings) is None
    with pytest.raises(GrantRevoked, match="Invalid Refresh Token"):
        manager.refresh(COMPANY, actor=ACTOR)
    assert manager.get_company(COMPANY).state is State.INVALIDATED
    assert manager.store.count_grants(COMPANY) == 0


# -- sweeps ----------------------------------------------------------------------------


def test_refresh_all_stops_on_client_rejected(
    manager: Manager, sandbox: SandboxServer, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    companies = ["ACME-01", "BOLT-02", "CORE-03"]
    for company_id in companies:
        authorize(manager, sandbox_http, company_id)
    before = {company_id: snapshot(manager, company_id) for company_id in companies}
    sandbox_http.delete("/_sandbox/requests").raise_for_status()
    wrong = make_settings(tmp_path, sandbox.url, client_secret="wrong-secret-7f3a9c")

    with Manager(wrong) as misconfigured:
        report = misconfigured.refresh_all(actor=ACTOR)

    assert report.refreshed == []
    assert report.invalidated == []
    assert list(report.failed) == ["ACME-01"]
    assert report.stopped_reason is not None
    assert "UPS rejected the client" in report.stopped_reason
    for company_id in companies:
        assert snapshot(manager, company_id) == before[company_id]
    assert len(requests_to(sandbox_http, REFRESH_PATH)) == 1


# -- parsing UPS's token JSON -----------------------------------------------------

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ISSUED_MS = 1_735_787_045_123
ISSUED = datetime.fromtimestamp(ISSUED_MS / 1000, tz=UTC)


def token_body(**fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "token_type": "Bearer",
        "issued_at": str(ISSUED_MS),
        "client_id": "optin-sandbox",
        "access_token": "access-abc",
        "expires_in": "14399",
        "refresh_token": "refresh-xyz",
        "refresh_token_expires_in": "5183999",
        "refresh_token_issued_at": str(ISSUED_MS),
        "status": "approved",
    }
    body.update(fields)
    return {name: value for name, value in body.items() if value is not None}


def test_token_numbers_as_strings() -> None:
    tokens = TokenSet.from_response(token_body(), NOW)

    assert tokens.access_token.reveal() == "access-abc"
    assert tokens.refresh_token.reveal() == "refresh-xyz"
    assert tokens.issued_at == ISSUED
    assert tokens.expires_at == ISSUED + timedelta(seconds=14399)
    assert tokens.refresh_expires_at == ISSUED + timedelta(seconds=5183999)
    assert tokens.status == "approved"


def test_token_numbers_as_numbers() -> None:
    body = token_body(
        issued_at=ISSUED_MS,
        refresh_token_issued_at=float(ISSUED_MS),
        expires_in=14399,
        refresh_token_expires_in=5183999.0,
    )

    tokens = TokenSet.from_response(body, NOW)

    assert tokens.issued_at == ISSUED
    assert tokens.expires_at == ISSUED + timedelta(seconds=14399)
    assert tokens.refresh_expires_at == ISSUED + timedelta(seconds=5183999)


def test_token_issued_at_in_milliseconds() -> None:
    tokens = TokenSet.from_response(token_body(issued_at="1700000000000"), NOW)

    assert tokens.issued_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_token_issued_at_missing() -> None:
    body = token_body(issued_at=None, refresh_token_issued_at=None)

    tokens = TokenSet.from_response(body, NOW)

    assert tokens.issued_at == NOW
    assert tokens.refresh_issued_at == NOW
    assert tokens.expires_at == NOW + timedelta(seconds=14399)


def test_token_repr_hides_tokens() -> None:
    text = repr(TokenSet.from_response(token_body(), NOW))

    assert "access-abc" not in text
    assert "refresh-xyz" not in text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"refresh_token": None}, "lacks the field refresh_token"),
        ({"access_token": None}, "lacks the field access_token"),
        ({"expires_in": None}, "lacks the field expires_in"),
        ({"expires_in": "soon"}, "expires_in is not a finite, non-negative"),
        ({"expires_in": "nan"}, "expires_in is not a finite, non-negative"),
        ({"expires_in": "inf"}, "expires_in is not a finite, non-negative"),
        ({"expires_in": "-5"}, "expires_in is not a finite, non-negative"),
        ({"refresh_token_expires_in": [1]}, "refresh_token_expires_in is not a"),
        ({"refresh_token_expires_in": "1e300"}, "out of range"),
        ({"issued_at": "253402300799000"}, "out of range"),
        ({"access_token": ""}, "access_token is not a non-empty string"),
        ({"refresh_token": 12345}, "refresh_token is not a non-empty string"),
    ],
)
def test_token_invalid_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TokenSet.from_response(token_body(**fields), NOW)


json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["3599", "1e308", "-1", "nan", "inf", "1700000000000"]),
    st.lists(st.integers(), max_size=2),
)
token_fields = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        for name in (
            "access_token",
            "refresh_token",
            "expires_in",
            "refresh_token_expires_in",
            "issued_at",
            "refresh_token_issued_at",
            "token_type",
            "scope",
            "status",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(overrides=token_fields)
def test_token_parse_total(overrides: dict[str, object]) -> None:
    """Any token JSON gives a TokenSet or InvalidRequest, never another error."""
    body = {**token_body(), **overrides}
    try:
        tokens = TokenSet.from_response(body, NOW)
    except InvalidRequest as error:
        assert error.status == 200
        return
    assert tokens.access_token.reveal()
    assert tokens.refresh_token.reveal()
    assert tokens.expires_at >= tokens.issued_at
    assert tokens.refresh_expires_at >= tokens.refresh_issued_at


def mocked_client(body: bytes, content_type: str) -> UPSClient:
    """Return a UPSClient whose every request gets HTTP 200 with ``body``.

    This mocks UPS because the sandbox never returns 200 with a malformed body.
    """

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    settings = Settings.build({"base_url": "http://127.0.0.1:9", "timeout": 1})
    http = httpx.Client(
        base_url=settings.base_url, transport=httpx.MockTransport(answer)
    )
    return UPSClient(settings, http=http)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"<html>busy</html>", ServerError, "not JSON"),
        (b"[1, 2]", InvalidRequest, "not a JSON object"),
        (b'"approved"', InvalidRequest, "not a JSON object"),
        (b"null", InvalidRequest, "not a JSON object"),
    ],
)
def test_refresh_malformed_success_body(
    body: bytes, error: type[OptinError], message: str
) -> None:
    client = mocked_client(body, "application/json")

    with pytest.raises(error, match=message):
        client.refresh(Secret("refresh-xyz"))
    client.close()


# -- no secret in messages, history or logs -------------------------------------


def test_secrets_never_leak(
    manager: Manager,
    sandbox: SandboxServer,
    sandbox_http: httpx.Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens, secrets, PKCE verifiers and codes stay out of errors, history and logs.

    Authorization codes are checked in the logs of optin's own loggers only,
    because the test's sign-in client plays the browser. httpcore's debug log
    of that client shows the redirect to the callback, code included, as a
    browser's address bar would.
    """
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="optin")
    client_secret = manager.settings.client_secret.reveal()
    basic = f"{manager.settings.client_id}:{client_secret}".encode()
    wrong_secret = "wrong-secret-7f3a9c"
    secret_values = {
        client_secret,
        base64.b64encode(basic).decode("ascii"),
        wrong_secret,
    }
    codes: set[str] = set()
    messages: list[str] = [repr(manager.settings), repr(manager), repr(manager.ups)]

    def remember_tokens() -> None:
        grant = manager.store.get_grant(COMPANY)
        assert grant is not None
        secret_values.add(grant.access_token.reveal())
        secret_values.add(grant.refresh_token.reveal())

    def signed_in_callback() -> str:
        """Begin an opt-in, remember its verifier and code, return the callback."""
        link = begin(manager, sandbox_http)
        state = parse_qs(urlsplit(link).query)["state"][0]
        pending = manager.store.get_pending(state)
        assert pending is not None
        secret_values.add(pending.verifier.reveal())
        messages.append(repr(pending))
        url = sign_in(sandbox_http, link, login_of(COMPANY), password_of(COMPANY))
        code = parse_qs(urlsplit(url).query)["code"][0]
        codes.update({code, quote(code, safe="")})
        return url

    def expect_error(error: type[OptinError], action: Any) -> None:
        with pytest.raises(error) as raised:
            action()
        messages.extend([str(raised.value), repr(raised.value)])

    url = signed_in_callback()
    messages.append(repr(manager.complete_opt_in(url, actor=ACTOR)))
    remember_tokens()
    expect_error(CallbackError, lambda: manager.complete_opt_in(url + "x", actor=ACTOR))
    manager.refresh(COMPANY, actor=ACTOR)
    remember_tokens()
    for status, error in ((429, RateLimited), (503, ServerError)):
        add_fault(sandbox_http, endpoint="refresh", status=status)
        expect_error(error, lambda: manager.refresh(COMPANY, actor=ACTOR))
    wrong = make_settings(tmp_path, sandbox.url, client_secret=wrong_secret)
    with Manager(wrong) as misconfigured:
        expect_error(
            ClientRejected, lambda: misconfigured.refresh(COMPANY, actor=ACTOR)
        )
        report = misconfigured.refresh_all(actor=ACTOR)
        messages.extend(report.failed.values())
        messages.append(str(report.stopped_reason))
    add_fault(sandbox_http, endpoint="refresh", drop_after_commit=True)
    expect_error(UPSConnectionError, lambda: manager.refresh(COMPANY, actor=ACTOR))
    expect_error(GrantRevoked, lambda: manager.refresh(COMPANY, actor=ACTOR))
    forged = signed_in_callback().replace("code=", "code=Zm9y%2B")
    expect_error(CodeRejected, lambda: manager.complete_opt_in(forged, actor=ACTOR))
    messages.extend(repr(entry) for entry in manager.get_history(COMPANY))

    history = [json.dumps(row) for row in manager.store.history()]
    optin_log = "\n".join(
        caplog.handler.format(record)
        for record in caplog.records
        if record.name.split(".")[0] == "optin"
    )
    assert len(history) > 5
    assert "optin.api" in {record.name for record in caplog.records}
    assert len(codes) >= 2
    for secret in [*secret_values, *codes]:
        assert len(secret) >= 8
        for text in messages:
            assert secret not in text, f"an error message contains {secret[:4]}…"
        for text in history:
            assert secret not in text, f"a history row contains {secret[:4]}…"
        assert secret not in optin_log, f"optin's log contains {secret[:4]}…"
    for secret in secret_values:
        assert secret not in caplog.text, f"a log record contains {secret[:4]}…"


def test_tokens_encrypted_at_rest(manager: Manager, sandbox_http: httpx.Client) -> None:
    authorize(manager, sandbox_http)
    manager.refresh(COMPANY, actor=ACTOR)
    grant = manager.store.get_grant(COMPANY)
    assert grant is not None
    path = manager.settings.db_path
    files = [path, path.with_name(path.name + "-wal")]
    raw = b"".join(file.read_bytes() for file in files if file.exists())

    assert grant.access_token.reveal().encode() not in raw
    assert grant.refresh_token.reveal().encode() not in raw
