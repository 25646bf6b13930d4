"""UPS's OAuth endpoints: authorize, token exchange and refresh.

The endpoints take UPS's paths and form-encoded request bodies, and they return
errors in UPS's JSON envelope (see ``errors.OAuthError``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .errors import (
    MSG_BLOCKED,
    MSG_INVALID_REDIRECT,
    NO_STORE,
    OAuthError,
    bad_request,
    invalid_client,
)
from .faults import apply_fault, finish_response
from .signin import SIGNIN_PATH
from .state import (
    AuthorizationCode,
    AuthorizeRequest,
    Client,
    FaultEndpoint,
    SandboxState,
    request_state,
)
from .tokens import pkce_challenge

logger = logging.getLogger(__name__)

AUTHORIZE_PATH = "/security/v1/oauth/authorize"
TOKEN_PATH = "/security/v1/oauth/token"  # noqa: S105
REFRESH_PATH = "/security/v1/oauth/refresh"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


# Request parsing helpers ------------------------------------------------------


async def _read_oauth_form(request: Request) -> dict[str, str]:
    """Parse a form-encoded OAuth request body.

    Raises OAuthError 400 for another content type, an undecodable body or a
    repeated parameter.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        raise bad_request(f"Invalid Content-Type: expected {FORM_CONTENT_TYPE}")
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request("Invalid request body: not UTF-8") from exc
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in form:
            raise bad_request(f"Duplicate parameter: {name}")
        form[name] = value
    return form


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise bad_request(f"Missing parameter: {name}")
    return value


def _basic_credentials(headers: Headers) -> tuple[str, str] | None:
    """Return (client_id, secret) from an HTTP Basic header, or None if absent.

    Raises OAuthError 401 for another scheme or a malformed value.
    """
    header = headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client()
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise invalid_client() from exc
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise invalid_client()
    return client_id, secret


def _authenticate_basic(state: SandboxState, headers: Headers) -> Client | None:
    """Return the client of a valid Basic header, None without a header.

    Raises OAuthError 401 for an unknown client id or a wrong secret.
    """
    credentials = _basic_credentials(headers)
    if credentials is None:
        return None
    client_id, secret = credentials
    client = state.clients.get(client_id)
    if client is None:
        raise invalid_client()
    if not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
        logger.info("Rejected wrong client secret for client %s", client_id)
        raise invalid_client()
    return client


def _check_not_blocked(client: Client) -> None:
    if client.blocked:
        raise OAuthError(403, "10403", MSG_BLOCKED)


def _check_grant_type(form: Mapping[str, str], expected: str) -> None:
    if _required(form, "grant_type") != expected:
        raise bad_request(f"Invalid grant_type: expected {expected}")


# OAuth endpoints ----------------------------------------------------------------


def _parse_authorize(state: SandboxState, params: QueryParams) -> AuthorizeRequest:
    """Validate an authorize request, raising OAuthError for any problem."""
    client_id = _required(params, "client_id")
    redirect_uri = _required(params, "redirect_uri")
    response_type = _required(params, "response_type")
    client = state.clients.get(client_id)
    if client is None:
        raise invalid_client()
    _check_not_blocked(client)
    if redirect_uri not in client.redirect_uris:
        logger.info("Rejected redirect URI %s for client %s", redirect_uri, client_id)
        raise bad_request(MSG_INVALID_REDIRECT)
    if response_type != "code":
        raise bad_request("Invalid response_type: expected code")
    challenge = params.get("code_challenge") or None
    if challenge is not None and not _PKCE_CHALLENGE.fullmatch(challenge):
        raise bad_request("Invalid code_challenge: expected 43 base64url characters")
    return AuthorizeRequest(
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=params.get("state"),
        scope=params.get("scope") or "read",
        code_challenge=challenge,
        created_at=state.now(),
    )


def _signin_url(request: Request, authorize: AuthorizeRequest) -> str:
    params = [
        ("client_id", authorize.client_id),
        ("redirect_uri", authorize.redirect_uri),
        ("response_type", "code"),
        ("scope", authorize.scope),
    ]
    if authorize.state is not None:
        params.append(("state", authorize.state))
    params.append(("type", "ups_com_api"))
    base = str(request.base_url).rstrip("/")
    return f"{base}{SIGNIN_PATH}?{urlencode(params)}"


async def authorize_endpoint(request: Request) -> Response:
    """Store the authorize request and redirect to the sign-in page."""
    state = request_state(request)
    await apply_fault(state, "authorize")
    authorize = _parse_authorize(state, request.query_params)
    state.remember_authorize_request(authorize)
    return RedirectResponse(_signin_url(request, authorize), status_code=302)


def _authenticate_token_client(
    state: SandboxState, client: Client | None, form: Mapping[str, str]
) -> tuple[Client, bool]:
    """Return the client of a token request and whether it used the PKCE form.

    ``client`` is the client of a valid Basic header, or None without one. The
    PKCE form has ``client_id`` and ``code_verifier`` in the body and no
    Authorization header. Raises OAuthError 401 when neither form is present.
    """
    if client is not None:
        body_client_id = form.get("client_id")
        if body_client_id and body_client_id != client.client_id:
            raise invalid_client()
        return client, False
    client_id = form.get("client_id")
    if not client_id or not form.get("code_verifier"):
        raise invalid_client()
    client = state.clients.get(client_id)
    if client is None:
        raise invalid_client()
    return client, True


def _check_pkce(form: Mapping[str, str], code: AuthorizationCode, pkce: bool) -> None:
    """Check the code verifier against the code's challenge.

    A PKCE-form request for a code issued without a challenge has no client
    authentication at all, so it gets 401.
    """
    challenge = code.request.code_challenge
    if challenge is None:
        if pkce:
            raise invalid_client()
        return
    verifier = _required(form, "code_verifier")
    if not _PKCE_VERIFIER.fullmatch(verifier):
        raise bad_request("Invalid code_verifier")
    if not hmac.compare_digest(pkce_challenge(verifier), challenge):
        logger.info("Rejected PKCE verifier for client %s", code.request.client_id)
        raise bad_request("Invalid code_verifier")


async def _exchange_code(state: SandboxState, request: Request) -> dict[str, str]:
    basic_client = _authenticate_basic(state, request.headers)
    form = await _read_oauth_form(request)
    client, pkce = _authenticate_token_client(state, basic_client, form)
    _check_not_blocked(client)
    _check_grant_type(form, "authorization_code")
    code = state.find_redeemable_code(_required(form, "code"), client.client_id)
    if _required(form, "redirect_uri") != code.request.redirect_uri:
        raise bad_request(MSG_INVALID_REDIRECT)
    _check_pkce(form, code, pkce)
    return state.redeem_code(code)


async def _refresh_grant(state: SandboxState, request: Request) -> dict[str, str]:
    client = _authenticate_basic(state, request.headers)
    if client is None:
        raise invalid_client()
    _check_not_blocked(client)
    form = await _read_oauth_form(request)
    _check_grant_type(form, "refresh_token")
    refresh_token = _required(form, "refresh_token")
    grant = state.find_refreshable_grant(refresh_token, client.client_id)
    return state.rotate(grant)


# Authenticates, validates and commits one token request, raising OAuthError.
TokenHandler = Callable[[SandboxState, Request], Awaitable[dict[str, str]]]


async def _token_request(
    request: Request, endpoint: FaultEndpoint, handler: TokenHandler
) -> Response:
    state = request_state(request)
    # Read the body before any delay fault, as a real server has it by then:
    # a client that times out during the delay does not stop the work.
    await request.body()
    fault = await apply_fault(state, endpoint)
    try:
        body = await handler(state, request)
        response: Response = JSONResponse(body, headers=NO_STORE)
    except OAuthError as error:
        log_oauth_error(request, error)
        response = error.to_response()
    return finish_response(state, fault, response)


async def token_endpoint(request: Request) -> Response:
    """Exchange an authorization code for tokens."""
    return await _token_request(request, "token", _exchange_code)


async def refresh_endpoint(request: Request) -> Response:
    """Rotate a refresh token and return a new token pair."""
    return await _token_request(request, "refresh", _refresh_grant)


def log_oauth_error(request: Request, error: OAuthError) -> None:
    logger.info(
        "%s %s returned %s %s: %s",
        request.method,
        request.url.path,
        error.status,
        error.code,
        error.message,
    )


def is_oauth_path(path: str) -> bool:
    """Return whether ``path`` is under ``/security``, the OAuth endpoints' prefix."""
    return path == "/security" or path.startswith("/security/")
