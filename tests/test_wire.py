"""The HTTP requests that optin sends to UPS, as the sandbox's request log records them.

The log keeps method, path, status, whether a Basic header was sent, and the
names (never the values) of query and form parameters.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from optin import Manager, Settings
from tests.helpers import authorize, callback_for, create_user

COMPANY = "ACME-01"
AUTHORIZE_PATH = "/security/v1/oauth/authorize"
TOKEN_PATH = "/security/v1/oauth/token"
REFRESH_PATH = "/security/v1/oauth/refresh"
FORM = "application/x-www-form-urlencoded"
AUTHORIZE_PARAMS = [
    "client_id",
    "code_challenge",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
]
# RFC 7636: base64url of a SHA-256 digest without "=" padding is 43 characters.
CHALLENGE_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def logged_requests(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    return [r for r in http.get("/_sandbox/requests").json() if r["path"] == path]


def clear_log(http: httpx.Client) -> None:
    http.delete("/_sandbox/requests").raise_for_status()


def begin(manager: Manager) -> str:
    manager.add_company(COMPANY, "Acme Ltd", actor="test")
    return manager.begin_opt_in(COMPANY, actor="test").url


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def test_code_exchange_request(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company(COMPANY, "Acme Ltd", actor="test")
    login = create_user(sandbox_http)
    callback_url = callback_for(manager, sandbox_http, COMPANY, login)
    clear_log(sandbox_http)

    manager.complete_opt_in(callback_url, actor="test")

    records = logged_requests(sandbox_http, TOKEN_PATH)
    assert len(records) == 1
    record = records[0]
    assert record["method"] == "POST"
    assert record["status"] == 200
    assert record["basic_auth"] is False
    assert record["content_type"].startswith(FORM)
    assert record["query_fields"] == []
    assert sorted(record["form_fields"]) == sorted(
        ["grant_type", "code", "redirect_uri", "client_id", "code_verifier"]
    )
    assert logged_requests(sandbox_http, REFRESH_PATH) == []


def test_refresh_request(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company(COMPANY, "Acme Ltd", actor="test")
    authorize(manager, sandbox_http, COMPANY)
    clear_log(sandbox_http)

    manager.refresh(COMPANY, actor="test")

    records = logged_requests(sandbox_http, REFRESH_PATH)
    assert len(records) == 1
    record = records[0]
    assert record["method"] == "POST"
    assert record["status"] == 200
    assert record["basic_auth"] is True
    assert record["content_type"].startswith(FORM)
    assert record["query_fields"] == []
    assert sorted(record["form_fields"]) == ["grant_type", "refresh_token"]
    assert logged_requests(sandbox_http, TOKEN_PATH) == []


def test_authorization_url(manager: Manager, settings: Settings) -> None:
    url = begin(manager)

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == settings.base_url
    assert parts.path == AUTHORIZE_PATH
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    assert sorted(name for name, _ in pairs) == AUTHORIZE_PARAMS
    params = dict(pairs)
    assert params["client_id"] == settings.client_id
    assert params["redirect_uri"] == settings.redirect_uri
    assert params["response_type"] == "code"
    assert params["scope"] == settings.scope
    assert len(params["state"]) >= 32
    assert CHALLENGE_SHAPE.fullmatch(params["code_challenge"])
    assert "code_challenge_method" not in params


def test_challenge_is_s256_of_verifier(manager: Manager) -> None:
    params = dict(parse_qsl(urlsplit(begin(manager)).query))

    pending = manager.store.get_pending(params["state"])

    assert pending is not None
    assert params["code_challenge"] == s256(pending.verifier.reveal())


def test_authorize_redirects_to_signin(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    url = begin(manager)
    clear_log(sandbox_http)

    response = sandbox_http.get(url)

    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert location.path == "/lasso/signin"
    assert dict(parse_qsl(location.query))["type"] == "ups_com_api"
    records = logged_requests(sandbox_http, AUTHORIZE_PATH)
    assert len(records) == 1
    assert records[0]["method"] == "GET"
    assert records[0]["status"] == 302
    assert records[0]["basic_auth"] is False
    assert sorted(records[0]["query_fields"]) == AUTHORIZE_PARAMS
