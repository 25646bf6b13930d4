"""Tests of the UPS sandbox over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from optin.sandbox import SandboxServer, SandboxSettings, start_sandbox
from optin.sandbox.app import sandbox_state
from optin.sandbox.server import serve

CLIENT_ID = "optin-sandbox"
CLIENT_SECRET = "sandbox-secret-not-for-production"
REDIRECT_URI = "http://127.0.0.1:8766/callback"
BASIC = (CLIENT_ID, CLIENT_SECRET)
AUTHORIZE = "/security/v1/oauth/authorize"
TOKEN = "/security/v1/oauth/token"
REFRESH = "/security/v1/oauth/refresh"
PASSWORD = "correct horse battery"
TOKEN_KEYS = {
    "token_type",
    "issued_at",
    "client_id",
    "access_token",
    "expires_in",
    "refresh_token",
    "refresh_token_expires_in",
    "refresh_token_issued_at",
    "refresh_token_status",
    "status",
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with start_sandbox() as server:
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sandbox.url, trust_env=False, follow_redirects=False, timeout=5.0
    ) as http:
        assert http.post("/_sandbox/reset").status_code == 200
        yield http


# Helpers ---------------------------------------------------------------------


def add_user(
    http: httpx.Client,
    username: str = "alice",
    email: str = "Alice@Example.com",
    password: str = PASSWORD,
) -> None:
    body = {"username": username, "email": email, "password": password}
    assert http.post("/_sandbox/users", json=body).status_code == 201


def add_client(http: httpx.Client, client_id: str, **fields: Any) -> None:
    body = {
        "client_id": client_id,
        "client_secret": f"{client_id}-secret",
        "redirect_uris": [REDIRECT_URI],
        "name": client_id,
        **fields,
    }
    assert http.post("/_sandbox/clients", json=body).status_code in (200, 201)


def authorize(http: httpx.Client, **overrides: str | None) -> httpx.Response:
    params: dict[str, str | None] = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "state": "st-1",
    }
    params.update(overrides)
    sent = {name: value for name, value in params.items() if value is not None}
    return http.get(AUTHORIZE, params=sent)


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def login_session(page: str) -> str:
    match = re.search(r'name="login_session" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


def open_signin(http: httpx.Client, **overrides: str | None) -> str:
    """Authorize, open the sign-in page and return its login session id."""
    response = authorize(http, **overrides)
    assert response.status_code == 302, response.text
    page = http.get(response.headers["location"])
    assert page.status_code == 200
    return login_session(page.text)


def sign_in(
    http: httpx.Client, session: str, login: str = "alice", password: str = PASSWORD
) -> httpx.Response:
    """Submit the user id and password pages and return the consent page."""
    step1 = {"login_session": session, "userid": login, "agreement": "yes"}
    assert 'id="password"' in http.post("/lasso/signin", data=step1).text
    step2 = {"login_session": session, "password": password}
    return http.post("/lasso/password", data=step2)


def obtain_code(http: httpx.Client, **overrides: str | None) -> str:
    session = open_signin(http, **overrides)
    sign_in(http, session)
    decision = {"login_session": session, "decision": "allow"}
    response = http.post("/lasso/consent", data=decision)
    assert response.status_code == 302
    return query_of(response.headers["location"])["code"][0]


def exchange(
    http: httpx.Client,
    code: str,
    auth: tuple[str, str] | None = BASIC,
    **fields: str,
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        **fields,
    }
    if auth is None:
        return http.post(TOKEN, data=data)
    return http.post(TOKEN, data=data, auth=auth)


def refresh(
    http: httpx.Client, token: str, auth: tuple[str, str] | None = BASIC
) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token}
    if auth is None:
        return http.post(REFRESH, data=data)
    return http.post(REFRESH, data=data, auth=auth)


def first_tokens(http: httpx.Client) -> dict[str, str]:
    add_user(http)
    response = exchange(http, obtain_code(http))
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


def ups_error(response: httpx.Response) -> tuple[str, str]:
    error = response.json()["response"]["errors"][0]
    return error["code"], error["message"]


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Authorize -------------------------------------------------------------------


def test_authorize_redirects_to_signin(client: httpx.Client) -> None:
    response = authorize(client)
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.path == "/lasso/signin"
    assert query_of(response.headers["location"]) == {
        "client_id": [CLIENT_ID],
        "redirect_uri": [REDIRECT_URI],
        "response_type": ["code"],
        "scope": ["read"],
        "state": ["st-1"],
        "type": ["ups_com_api"],
    }


def test_authorize_without_state(client: httpx.Client) -> None:
    response = authorize(client, state=None, scope="read write")
    query = query_of(response.headers["location"])
    assert "state" not in query
    assert query["scope"] == ["read write"]


def test_authorize_omits_challenge_from_signin(client: httpx.Client) -> None:
    response = authorize(client, code_challenge=challenge_of("v" * 50))
    assert "code_challenge" not in query_of(response.headers["location"])


def test_authorize_unknown_client(client: httpx.Client) -> None:
    response = authorize(client, client_id="nobody")
    assert response.status_code == 401
    assert ups_error(response) == ("10401", "ClientId is Invalid")


def test_authorize_bad_redirect(client: httpx.Client) -> None:
    response = authorize(client, redirect_uri="http://127.0.0.1:9/other")
    assert response.status_code == 400
    assert ups_error(response) == ("10400", "Invalid Redirect URL")


def test_authorize_wrong_response_type(client: httpx.Client) -> None:
    response = authorize(client, response_type="token")
    assert response.status_code == 400
    assert ups_error(response)[0] == "10400"


def test_authorize_missing_redirect(client: httpx.Client) -> None:
    response = authorize(client, redirect_uri=None)
    assert response.status_code == 400
    assert "location" not in response.headers


def test_authorize_blocked_client(client: httpx.Client) -> None:
    add_client(client, "blocked-app", blocked=True)
    response = authorize(client, client_id="blocked-app")
    assert response.status_code == 403
    assert ups_error(response) == ("10403", "Blocked Merchant")


def test_settings_extra_redirect_uri() -> None:
    extra = "http://127.0.0.1:9999/cb"
    settings = SandboxSettings(extra_redirect_uris=[extra], rsa_key_bits=1024)
    with (
        start_sandbox(settings=settings) as server,
        httpx.Client(base_url=server.url, trust_env=False) as http,
    ):
        response = authorize(http, redirect_uri=extra)
    assert response.status_code == 302


# Sign-in pages ---------------------------------------------------------------


def test_signin_page_ids(client: httpx.Client) -> None:
    page = client.get(authorize(client).headers["location"]).text
    for element in (
        'name="userid" id="userid"',
        'name="agreement" id="agreement" value="yes"',
        'id="continue"',
        'id="cancel"',
        "<title>",
        "UPS Confidentiality Agreement",
    ):
        assert element in page


def test_signin_without_agreement(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    response = client.post(
        "/lasso/signin", data={"login_session": session, "userid": "alice"}
    )
    assert 'id="error"' in response.text
    assert "Confidentiality Agreement" in response.text
    assert 'id="password"' not in response.text


def test_signin_unknown_user(client: httpx.Client) -> None:
    session = open_signin(client)
    data = {"login_session": session, "userid": "mallory", "agreement": "yes"}
    response = client.post("/lasso/signin", data=data)
    assert 'id="error"' in response.text
    assert 'id="password"' not in response.text


def test_signin_by_email(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    consent = sign_in(client, session, login="alice@EXAMPLE.com")
    assert 'id="allow"' in consent.text


def test_signin_wrong_password(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    response = sign_in(client, session, password="wrong")
    assert 'id="error"' in response.text
    assert 'id="password"' in response.text
    assert 'id="allow"' not in response.text


def test_consent_names_application(client: httpx.Client) -> None:
    add_user(client)
    consent = sign_in(client, open_signin(client))
    assert "optin (sandbox)" in consent.text
    assert 'name="decision" value="deny" id="deny"' in consent.text


def test_signin_escapes_client_name(client: httpx.Client) -> None:
    add_client(client, "evil", name="<script>alert(1)</script>")
    page = client.get(authorize(client, client_id="evil").headers["location"]).text
    assert "<script>alert" not in page
    assert "&lt;script&gt;" in page


def test_signin_link_without_authorize(client: httpx.Client) -> None:
    response = client.get(
        "/lasso/signin",
        params={
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "read",
            "state": "never-sent",
            "type": "ups_com_api",
        },
    )
    assert response.status_code == 400


def test_cancel_denies_access(client: httpx.Client) -> None:
    session = open_signin(client)
    response = client.post(
        "/lasso/signin", data={"login_session": session, "action": "cancel"}
    )
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT_URI + "?")
    query = query_of(response.headers["location"])
    assert query == {"error": ["access_denied"], "state": ["st-1"]}


def test_deny_denies_access(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    sign_in(client, session)
    response = client.post(
        "/lasso/consent", data={"login_session": session, "decision": "deny"}
    )
    assert response.status_code == 302
    query = query_of(response.headers["location"])
    assert query == {"error": ["access_denied"], "state": ["st-1"]}


def test_session_single_use(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    sign_in(client, session)
    data = {"login_session": session, "decision": "allow"}
    assert client.post("/lasso/consent", data=data).status_code == 302
    assert client.post("/lasso/consent", data=data).status_code == 400


def test_allow_redirect_params(client: httpx.Client) -> None:
    add_user(client)
    session = open_signin(client)
    sign_in(client, session)
    response = client.post(
        "/lasso/consent", data={"login_session": session, "decision": "allow"}
    )
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?code=")
    assert set(query_of(location)) == {"code", "scope", "state"}
    assert query_of(location)["scope"] == ["read"]
    assert query_of(location)["state"] == ["st-1"]


def test_redirect_query_appended(client: httpx.Client) -> None:
    redirect = "http://127.0.0.1:8766/callback?tenant=7"
    add_client(client, "app-q", redirect_uris=[redirect])
    add_user(client)
    session = open_signin(client, client_id="app-q", redirect_uri=redirect)
    sign_in(client, session)
    response = client.post(
        "/lasso/consent", data={"login_session": session, "decision": "allow"}
    )
    location = response.headers["location"]
    assert location.startswith(redirect + "&code=")
    assert query_of(location)["tenant"] == ["7"]


def test_code_format(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    assert code.endswith("==")
    assert "+" in code
    assert "/" in code
    assert len(base64.b64decode(code, validate=True)) > 0


# Token exchange --------------------------------------------------------------


def test_exchange_with_basic(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    assert set(tokens) == TOKEN_KEYS
    assert all(isinstance(value, str) for value in tokens.values())
    assert tokens["token_type"] == "Bearer"
    assert tokens["client_id"] == CLIENT_ID
    assert tokens["expires_in"] == "3600"
    assert tokens["refresh_token_expires_in"] == "5183999"
    assert tokens["status"] == "approved"
    assert tokens["refresh_token_status"] == "approved"


def test_issued_at_in_ms(client: httpx.Client) -> None:
    before_ms = time.time() * 1000
    tokens = first_tokens(client)
    after_ms = time.time() * 1000
    assert before_ms - 1000 <= int(tokens["issued_at"]) <= after_ms + 1000
    assert tokens["refresh_token_issued_at"] == tokens["issued_at"]


def test_access_token_jwt(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    header_b64, claims_b64, signature_b64 = tokens["access_token"].split(".")
    assert json.loads(b64url_decode(header_b64)) == {"alg": "RS384", "typ": "JWT"}
    claims = json.loads(b64url_decode(claims_b64))
    assert claims["sub"] == "alice"
    assert claims["client_id"] == CLIENT_ID
    assert claims["exp"] - claims["iat"] == 3600
    key = client.get("/_sandbox/jwks").json()["keys"][0]
    public_key = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(key["e"]), "big"),
        int.from_bytes(b64url_decode(key["n"]), "big"),
    ).public_key()
    public_key.verify(
        b64url_decode(signature_b64),
        f"{header_b64}.{claims_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA384(),
    )


def test_exchange_with_pkce(client: httpx.Client) -> None:
    add_user(client)
    verifier = secrets.token_urlsafe(48)
    code = obtain_code(client, code_challenge=challenge_of(verifier))
    response = exchange(
        client, code, auth=None, client_id=CLIENT_ID, code_verifier=verifier
    )
    assert response.status_code == 200, response.text
    assert "authorization" not in response.request.headers
    assert response.json()["refresh_token"]


def test_pkce_mismatch(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client, code_challenge=challenge_of(secrets.token_urlsafe(48)))
    response = exchange(
        client,
        code,
        auth=None,
        client_id=CLIENT_ID,
        code_verifier=secrets.token_urlsafe(48),
    )
    assert response.status_code == 400
    assert ups_error(response)[0] == "10400"


def test_pkce_verifier_required(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client, code_challenge=challenge_of(secrets.token_urlsafe(48)))
    response = exchange(client, code)
    assert response.status_code == 400


def test_pkce_form_without_challenge(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    response = exchange(
        client,
        code,
        auth=None,
        client_id=CLIENT_ID,
        code_verifier=secrets.token_urlsafe(48),
    )
    assert response.status_code == 401


def test_exchange_without_auth(client: httpx.Client) -> None:
    add_user(client)
    response = exchange(client, obtain_code(client), auth=None)
    assert response.status_code == 401
    assert ups_error(response) == ("10401", "ClientId is Invalid")


def test_exchange_wrong_secret(client: httpx.Client) -> None:
    add_user(client)
    response = exchange(client, obtain_code(client), auth=(CLIENT_ID, "wrong"))
    assert response.status_code == 401
    assert ups_error(response)[0] == "10401"


def test_exchange_wrong_grant_type(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    response = exchange(client, code, grant_type="client_credentials")
    assert response.status_code == 400


def test_exchange_redirect_mismatch(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    response = exchange(client, code, redirect_uri=REDIRECT_URI + "/")
    assert response.status_code == 400
    assert ups_error(response) == ("10400", "Invalid Redirect URL")


def test_exchange_json_body(client: httpx.Client) -> None:
    add_user(client)
    body = {
        "grant_type": "authorization_code",
        "code": obtain_code(client),
        "redirect_uri": REDIRECT_URI,
    }
    response = client.post(TOKEN, json=body, auth=BASIC)
    assert response.status_code == 400


def test_refresh_no_auth_no_body(client: httpx.Client) -> None:
    response = client.post(REFRESH)
    assert response.status_code == 401
    assert ups_error(response)[0] == "10401"


def test_exchange_unencoded_code(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    raw = f"grant_type=authorization_code&code={code}&redirect_uri={REDIRECT_URI}"
    response = client.post(
        TOKEN,
        content=raw,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=BASIC,
    )
    assert response.status_code == 400


def test_code_single_use(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    first = exchange(client, code)
    second = exchange(client, code)
    assert first.status_code == 200
    assert second.status_code == 400
    assert ups_error(second)[0] == "10400"
    assert refresh(client, first.json()["refresh_token"]).status_code == 200


def test_code_expiry(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    client.post("/_sandbox/clock", json={"advance": 301})
    response = exchange(client, code)
    assert response.status_code == 400
    assert ups_error(response)[0] == "10400"


def test_code_of_other_client(client: httpx.Client) -> None:
    add_client(client, "app-b")
    add_user(client)
    code = obtain_code(client)
    response = exchange(client, code, auth=("app-b", "app-b-secret"))
    assert response.status_code == 400


# Refresh -----------------------------------------------------------------------


def test_refresh_rotates(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 200
    renewed = response.json()
    assert set(renewed) == TOKEN_KEYS
    assert all(isinstance(value, str) for value in renewed.values())
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert renewed["access_token"] != tokens["access_token"]


def test_refresh_old_token_dead(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    renewed = refresh(client, tokens["refresh_token"]).json()
    reused = refresh(client, tokens["refresh_token"])
    assert reused.status_code == 400
    assert ups_error(reused) == ("10400", "Invalid Refresh Token")
    assert refresh(client, renewed["refresh_token"]).status_code == 200


def test_refresh_without_basic(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    response = refresh(client, tokens["refresh_token"], auth=None)
    assert response.status_code == 401
    assert ups_error(response) == ("10401", "ClientId is Invalid")


def test_refresh_other_client(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    add_client(client, "app-b")
    response = refresh(client, tokens["refresh_token"], auth=("app-b", "app-b-secret"))
    assert response.status_code == 400
    assert ups_error(response)[1] == "Invalid Refresh Token"


def test_refresh_token_expiry(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    client.post("/_sandbox/clock", json={"advance": 5184000})
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 400
    assert ups_error(response)[1] == "Invalid Refresh Token"


def test_password_change_kills_grant(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    changed = client.post(
        "/_sandbox/users/alice@example.com/password", json={"password": "new pass"}
    )
    assert changed.status_code == 200
    assert changed.json()["grants_revoked"] == 1
    response = refresh(client, tokens["refresh_token"])
    assert response.status_code == 400
    assert ups_error(response)[1] == "Invalid Refresh Token"
    check = client.post(
        "/_sandbox/introspect", json={"access_token": tokens["access_token"]}
    )
    assert check.json()["active"] is False


def test_password_change_all_clients(client: httpx.Client) -> None:
    add_client(client, "app-b")
    add_user(client)
    exchange(client, obtain_code(client))
    code_b = obtain_code(client, client_id="app-b")
    exchange(client, code_b, auth=("app-b", "app-b-secret"))
    changed = client.post("/_sandbox/users/alice/password", json={"password": "x2"})
    assert changed.json()["grants_revoked"] == 2


# Faults ------------------------------------------------------------------------


def test_fault_429(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    client.post("/_sandbox/faults", json={"endpoint": "token", "status": 429})
    limited = exchange(client, code)
    assert limited.status_code == 429
    assert ups_error(limited) == ("10429", "Rate Limit Exceeded")
    assert exchange(client, code).status_code == 200


def test_fault_503_refresh(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    fault = {"endpoint": "refresh", "status": 503, "count": 2}
    client.post("/_sandbox/faults", json=fault)
    assert refresh(client, tokens["refresh_token"]).status_code == 503
    assert refresh(client, tokens["refresh_token"]).status_code == 503
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_fault_authorize(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"endpoint": "authorize", "status": 502})
    response = authorize(client)
    assert response.status_code == 502
    assert "response" in response.json()


def test_fault_delay(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    fault = {"endpoint": "refresh", "delay": 1.5}
    client.post("/_sandbox/faults", json=fault)
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            REFRESH,
            data={"grant_type": "refresh_token", "refresh_token": "unknown"},
            auth=BASIC,
            timeout=0.3,
        )
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_faults_cleared(client: httpx.Client) -> None:
    client.post("/_sandbox/faults", json={"endpoint": "authorize", "status": 429})
    assert client.delete("/_sandbox/faults").json() == {"cleared": 1}
    assert authorize(client).status_code == 302


def test_fault_rejects_bad_status(client: httpx.Client) -> None:
    fault = {"endpoint": "token", "status": 418}
    assert client.post("/_sandbox/faults", json=fault).status_code == 400


def test_drop_after_commit_token(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(client)
    code = obtain_code(client)
    fault = {"endpoint": "token", "drop_after_commit": True}
    client.post("/_sandbox/faults", json=fault)
    with pytest.raises(httpx.RemoteProtocolError):
        exchange(client, code)
    assert exchange(client, code).status_code == 400
    grants = client.get("/_sandbox/grants").json()
    assert len(grants) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_drop_after_commit_refresh(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    fault = {"endpoint": "refresh", "drop_after_commit": True}
    client.post("/_sandbox/faults", json=fault)
    with pytest.raises(httpx.RemoteProtocolError):
        refresh(client, tokens["refresh_token"])
    reused = refresh(client, tokens["refresh_token"])
    assert reused.status_code == 400
    assert ups_error(reused)[1] == "Invalid Refresh Token"
    assert client.get("/_sandbox/grants").json()[0]["rotations"] == 1


def test_drop_logged(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    client.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "drop_after_commit": True}
    )
    client.delete("/_sandbox/requests")
    with pytest.raises(httpx.RemoteProtocolError):
        refresh(client, tokens["refresh_token"])
    record = client.get("/_sandbox/requests").json()[0]
    assert record["dropped"] is True
    assert record["status"] is None


def test_drop_fallback_delays_response() -> None:
    settings = SandboxSettings(rsa_key_bits=1024)
    with (
        start_sandbox(settings=settings) as server,
        httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as http,
    ):
        sandbox_state(server.app).drop_connection = None
        fault = {"endpoint": "refresh", "drop_after_commit": True, "hang": 0.2}
        http.post("/_sandbox/faults", json=fault)
        response = refresh(http, "unknown")
    assert response.status_code == 504
    assert ups_error(response)[0] == "10504"


def test_blocked_client_token(client: httpx.Client) -> None:
    add_user(client)
    code = obtain_code(client)
    add_client(
        client,
        CLIENT_ID,
        client_secret=CLIENT_SECRET,
        blocked=True,
    )
    response = exchange(client, code)
    assert response.status_code == 403
    assert ups_error(response) == ("10403", "Blocked Merchant")


# Routing, request log, controls ----------------------------------------------


@pytest.mark.parametrize("path", [AUTHORIZE, TOKEN, REFRESH])
def test_api_prefix_404(client: httpx.Client, path: str) -> None:
    response = client.request(
        "GET" if path == AUTHORIZE else "POST", "/api" + path, auth=BASIC
    )
    assert response.status_code == 404


@pytest.mark.parametrize("path", ["revoke", "logout", "userinfo"])
def test_no_extra_endpoints(client: httpx.Client, path: str) -> None:
    response = client.post(f"/security/v1/oauth/{path}", auth=BASIC)
    assert response.status_code == 404
    assert ups_error(response)[0] == "10404"


def test_requests_log_no_secrets(client: httpx.Client) -> None:
    tokens = first_tokens(client)
    refresh(client, tokens["refresh_token"])
    records = client.get("/_sandbox/requests").json()
    text = json.dumps(records)
    for secret in (CLIENT_SECRET, tokens["refresh_token"], PASSWORD, "st-1"):
        assert secret not in text
    token_record = next(r for r in records if r["path"] == TOKEN)
    assert token_record["form_fields"] == ["grant_type", "code", "redirect_uri"]
    assert token_record["basic_auth"] is True
    assert token_record["status"] == 200


def test_requests_log_cleared(client: httpx.Client) -> None:
    authorize(client)
    client.delete("/_sandbox/requests")
    assert client.get("/_sandbox/requests").json() == []


def test_reset_removes_users(client: httpx.Client) -> None:
    add_user(client)
    client.post("/_sandbox/reset")
    session = open_signin(client)
    data = {"login_session": session, "userid": "alice", "agreement": "yes"}
    assert 'id="error"' in client.post("/lasso/signin", data=data).text


def test_duplicate_user_rejected(client: httpx.Client) -> None:
    add_user(client)
    body = {"username": "bob", "email": "alice@example.com", "password": "x"}
    assert client.post("/_sandbox/users", json=body).status_code == 409


def test_health(client: httpx.Client) -> None:
    assert client.get("/_sandbox/health").json() == {"status": "ok"}


def test_app_module_reexports() -> None:
    from optin.sandbox import app

    for name in ("SandboxSettings", "create_app", "pkce_challenge", "sandbox_state"):
        assert hasattr(app, name), name
    # The S256 example of RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert app.pkce_challenge(verifier) == challenge


def test_serve_rejects_remote_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(host="192.0.2.10")
