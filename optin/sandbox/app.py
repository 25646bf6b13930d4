"""ASGI stand-in for UPS's OAuth endpoints and the UPS.com sign-in pages.

``create_app`` returns a Starlette app that keeps every client, user, code and grant
in memory. It serves three groups of routes:

- ``/security/v1/oauth/{authorize,token,refresh}``: the OAuth endpoints, with UPS's
  paths, form-encoded request bodies and JSON error envelope
  ``{"response": {"errors": [{"code": ..., "message": ...}]}}``.
- ``/lasso/{signin,password,consent}``: the sign-in pages that the authorize
  endpoint redirects to, as plain HTML forms.
- ``/_sandbox/...``: a JSON control API for tests and demos (users, clients, faults,
  clock, request log, reset).

The module imports nothing from the rest of ``optin``, so that the product's client
and this stand-in are written separately and can catch each other's mistakes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, Literal, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.datastructures import FormData, Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import pages

logger = logging.getLogger(__name__)

DEFAULT_REDIRECT_URI = "http://127.0.0.1:8766/callback"
AUTHORIZE_PATH = "/security/v1/oauth/authorize"
TOKEN_PATH = "/security/v1/oauth/token"  # noqa: S105
REFRESH_PATH = "/security/v1/oauth/refresh"
SIGNIN_PATH = "/lasso/signin"

MSG_INVALID_CLIENT = "ClientId is Invalid"
MSG_INVALID_REDIRECT = "Invalid Redirect URL"
MSG_INVALID_REFRESH = "Invalid Refresh Token"
MSG_INVALID_CODE = "Invalid Authorization Code"
MSG_EXPIRED_CODE = "Authorization Code Expired"
MSG_BLOCKED = "Blocked Merchant"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Scope key that marks a request whose response a drop_after_commit fault withheld.
DROPPED_SCOPE_KEY = "optin.sandbox.dropped"

FaultEndpoint = Literal["authorize", "token", "refresh"]
FAULT_ENDPOINTS: tuple[FaultEndpoint, ...] = ("authorize", "token", "refresh")
FAULT_STATUSES = (429, 500, 502, 503)
MAX_FAULT_DELAY = 600.0

# Closes the connection of the given (host, port) client without a response.
# Returns False when it has no such connection.
ConnectionDropper = Callable[[tuple[str, int]], bool]

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


@dataclass
class SandboxSettings:
    """Token lifetimes in seconds, the default client and fault defaults."""

    access_token_lifetime: int = 3600
    refresh_token_lifetime: int = 5183999
    code_lifetime: int = 300
    # Lifetime of a pending authorize request and of a sign-in session.
    login_session_lifetime: int = 1800
    client_id: str = "optin-sandbox"
    client_secret: str = "sandbox-secret-not-for-production"  # noqa: S105
    redirect_uris: list[str] = field(default_factory=lambda: [DEFAULT_REDIRECT_URI])
    # Registered for the default client in addition to ``redirect_uris``.
    extra_redirect_uris: list[str] = field(default_factory=list)
    client_name: str = "optin (sandbox)"
    # Seconds a drop_after_commit fault delays the response when the server cannot
    # close the connection, unless the fault sets its own ``hang``.
    drop_hang: float = 30.0
    rsa_key_bits: int = 2048
    # Maximum number of OAuth requests kept in the request log; older ones are
    # discarded first.
    request_log_size: int = 1000

    def __post_init__(self) -> None:
        lifetimes = {
            "access_token_lifetime": self.access_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "code_lifetime": self.code_lifetime,
            "login_session_lifetime": self.login_session_lifetime,
        }
        for name, value in lifetimes.items():
            if value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        for uri in [*self.redirect_uris, *self.extra_redirect_uris]:
            validate_redirect_uri(uri)


def validate_redirect_uri(uri: str) -> None:
    """Raise ValueError unless ``uri`` is an absolute http(s) URL without fragment."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URL")
    if parts.fragment or uri.endswith("#"):
        raise ValueError(f"redirect URI {uri!r} must not contain a fragment")


# Errors ---------------------------------------------------------------------


class OAuthError(Exception):
    """Error that an OAuth endpoint returns in UPS's JSON envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_response(self) -> JSONResponse:
        body = {"response": {"errors": [{"code": self.code, "message": self.message}]}}
        return JSONResponse(body, status_code=self.status, headers=_NO_STORE)


class ControlError(Exception):
    """Invalid request to the ``/_sandbox`` control API."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _bad_request(message: str) -> OAuthError:
    return OAuthError(400, "10400", message)


def _invalid_client() -> OAuthError:
    return OAuthError(401, "10401", MSG_INVALID_CLIENT)


def _fault_error(status: int) -> OAuthError:
    if status == 429:
        return OAuthError(429, "10429", "Rate Limit Exceeded")
    return OAuthError(status, f"10{status}", HTTPStatus(status).phrase)


# Model ----------------------------------------------------------------------


@dataclass
class Client:
    """Registered OAuth client (a UPS developer app)."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    name: str
    blocked: bool = False


@dataclass
class User:
    """UPS.com account that can sign in on the sandbox's pages."""

    username: str
    email: str
    password: str


@dataclass(frozen=True)
class AuthorizeRequest:
    """Parameters of one accepted authorize request."""

    client_id: str
    redirect_uri: str
    state: str | None
    scope: str
    code_challenge: str | None
    created_at: float

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return (self.client_id, self.redirect_uri, self.state, self.scope)


@dataclass
class LoginSession:
    """Progress of one user through the sign-in pages."""

    session_id: str
    request: AuthorizeRequest
    created_at: float
    step: Literal["userid", "password", "consent"] = "userid"
    username: str | None = None


@dataclass
class AuthorizationCode:
    """Issued authorization code and the grant it stands for."""

    code: str
    request: AuthorizeRequest
    username: str
    expires_at: float
    used: bool = False


@dataclass
class Grant:
    """Consent of one user to one client, carried by a rotating refresh token."""

    grant_id: str
    client_id: str
    username: str
    scope: str
    created_at: float
    refresh_token: str
    refresh_issued_at: float
    refresh_expires_at: float
    active: bool = True
    rotations: int = 0

    def describe(self) -> dict[str, Any]:
        """Return the grant as JSON without its refresh token."""
        return {
            "grant_id": self.grant_id,
            "client_id": self.client_id,
            "username": self.username,
            "scope": self.scope,
            "active": self.active,
            "created_at": self.created_at,
            "refresh_token_expires_at": self.refresh_expires_at,
            "rotations": self.rotations,
        }


@dataclass(frozen=True)
class AccessToken:
    """Issued access token, found by the JWT's ``jti`` claim."""

    grant_id: str
    expires_at: float


@dataclass
class Fault:
    """Failure to inject into the next ``remaining`` requests to one endpoint."""

    endpoint: FaultEndpoint
    kind: Literal["status", "delay", "drop"]
    remaining: int
    status: int = 0
    delay: float = 0.0
    hang: float = 0.0


@dataclass(frozen=True)
class RequestRecord:
    """OAuth request as the request log stores it: names only, never values."""

    time: float
    method: str
    path: str
    status: int | None
    dropped: bool
    basic_auth: bool
    content_type: str | None
    query_fields: list[str]
    form_fields: list[str]


def new_authorization_code() -> str:
    """Return a random standard-base64 code that ends in ``==``.

    The code always contains ``+`` and ``/``, so a client that does not
    percent-encode and decode it correctly fails at the token exchange.
    """
    while True:
        # 64 bytes encode to 88 characters with two padding characters.
        code = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
        if "+" in code and "/" in code:
            return code


def pkce_challenge(verifier: str) -> str:
    """Return the S256 challenge: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_json(value: Mapping[str, object]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


class TokenSigner:
    """RSA key, generated at start, that signs access tokens as RS384 JWTs."""

    HEADER: ClassVar[dict[str, str]] = {"alg": "RS384", "typ": "JWT"}

    def __init__(self, key_bits: int) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)

    def sign(self, claims: Mapping[str, object]) -> str:
        signing_input = f"{_b64url_json(self.HEADER)}.{_b64url_json(claims)}"
        signature = self._key.sign(
            signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA384()
        )
        return f"{signing_input}.{_b64url(signature)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """Return the claims of a token this key signed, or None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            signature = _b64url_decode(parts[2])
            self._key.public_key().verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA384(),
            )
            claims = json.loads(_b64url_decode(parts[1]))
        except (InvalidSignature, ValueError, binascii.Error):
            return None
        return claims if isinstance(claims, dict) else None

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        modulus = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        exponent = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        key = {
            "kty": "RSA",
            "alg": "RS384",
            "use": "sig",
            "n": _b64url(modulus),
            "e": _b64url(exponent),
        }
        return {"keys": [key]}


# State ----------------------------------------------------------------------


class SandboxState:
    """In-memory clients, users, codes, grants, faults and request log.

    All access happens on the server's event loop thread, so no locks are needed.
    Times come from ``now()``, which ``advance_clock`` moves forward.
    """

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.signer = TokenSigner(settings.rsa_key_bits)
        # Set by the server that runs the app; see ``DroppedResponse``.
        self.drop_connection: ConnectionDropper | None = None
        self.clock_offset = 0.0
        self.clients: dict[str, Client] = {}
        self.users: dict[str, User] = {}
        self.authorize_requests: dict[
            tuple[str, str, str | None, str], AuthorizeRequest
        ] = {}
        self.login_sessions: dict[str, LoginSession] = {}
        self.codes: dict[str, AuthorizationCode] = {}
        self.grants: dict[str, Grant] = {}
        # Current refresh token of each grant; a rotated token is removed at once.
        self.refresh_tokens: dict[str, str] = {}
        self.access_tokens: dict[str, AccessToken] = {}
        self.faults: list[Fault] = []
        self.requests: deque[RequestRecord] = deque(maxlen=settings.request_log_size)
        self.reset()

    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        self.clock_offset += seconds

    def reset(self) -> None:
        """Drop everything except the default client and the signing key."""
        self.clock_offset = 0.0
        for store in (
            self.clients,
            self.users,
            self.authorize_requests,
            self.login_sessions,
            self.codes,
            self.grants,
            self.refresh_tokens,
            self.access_tokens,
        ):
            store.clear()
        self.faults.clear()
        self.requests.clear()
        self._register_default_client()

    def _register_default_client(self) -> None:
        settings = self.settings
        uris = dict.fromkeys([*settings.redirect_uris, *settings.extra_redirect_uris])
        self.register_client(
            Client(
                client_id=settings.client_id,
                client_secret=settings.client_secret,
                redirect_uris=tuple(uris),
                name=settings.client_name,
            )
        )

    # Clients and users

    def register_client(self, client: Client) -> bool:
        """Add or replace a client. Return True if it replaced one."""
        replaced = client.client_id in self.clients
        self.clients[client.client_id] = client
        return replaced

    def add_user(self, user: User) -> None:
        """Add a user, or raise ControlError 409 if the username or email is taken."""
        if self.find_user(user.username) or self.find_user(user.email):
            raise ControlError(409, f"user {user.username!r} or email already exists")
        self.users[user.username] = user

    def find_user(self, login: str) -> User | None:
        """Find a user by exact username or by case-insensitive email."""
        user = self.users.get(login)
        if user is not None:
            return user
        folded = login.casefold()
        for candidate in self.users.values():
            if candidate.email.casefold() == folded:
                return candidate
        return None

    def change_password(self, user: User, password: str) -> tuple[int, int]:
        """Set a new password and revoke the user's grants and unused codes.

        Returns the number of grants and of codes revoked.
        """
        user.password = password
        grants = 0
        for grant in self.grants.values():
            if grant.username == user.username and grant.active:
                self._revoke_grant(grant)
                grants += 1
        codes = 0
        for code in self.codes.values():
            if code.username == user.username and not code.used:
                code.used = True
                codes += 1
        for session_id, session in list(self.login_sessions.items()):
            if session.username == user.username:
                del self.login_sessions[session_id]
        return grants, codes

    def _revoke_grant(self, grant: Grant) -> None:
        grant.active = False
        self.refresh_tokens.pop(grant.refresh_token, None)

    # Authorize requests and sign-in sessions

    def remember_authorize_request(self, request: AuthorizeRequest) -> None:
        self._purge_expired()
        self.authorize_requests[request.key] = request

    def find_authorize_request(
        self, key: tuple[str, str, str | None, str]
    ) -> AuthorizeRequest | None:
        request = self.authorize_requests.get(key)
        if request is None or self._login_expired(request.created_at):
            return None
        return request

    def start_login_session(self, request: AuthorizeRequest) -> LoginSession:
        session = LoginSession(
            session_id=secrets.token_urlsafe(24), request=request, created_at=self.now()
        )
        self.login_sessions[session.session_id] = session
        return session

    def find_login_session(self, session_id: str, step: str) -> LoginSession | None:
        """Return the live session with this id if it is at ``step``, else None."""
        session = self.login_sessions.get(session_id)
        if session is None or session.step != step:
            return None
        if self._login_expired(session.created_at):
            del self.login_sessions[session_id]
            return None
        return session

    def end_login_session(self, session: LoginSession) -> None:
        self.login_sessions.pop(session.session_id, None)

    def _login_expired(self, created_at: float) -> bool:
        return self.now() >= created_at + self.settings.login_session_lifetime

    def _purge_expired(self) -> None:
        now = self.now()
        for key, request in list(self.authorize_requests.items()):
            if self._login_expired(request.created_at):
                del self.authorize_requests[key]
        for session_id, session in list(self.login_sessions.items()):
            if self._login_expired(session.created_at):
                del self.login_sessions[session_id]
        for code_text, code in list(self.codes.items()):
            # Keep expired codes for a while so that a late exchange reads
            # "expired" rather than "invalid".
            if now >= code.expires_at + self.settings.login_session_lifetime:
                del self.codes[code_text]

    # Codes, grants and tokens

    def issue_code(self, request: AuthorizeRequest, username: str) -> str:
        self._purge_expired()
        code = new_authorization_code()
        self.codes[code] = AuthorizationCode(
            code=code,
            request=request,
            username=username,
            expires_at=self.now() + self.settings.code_lifetime,
        )
        return code

    def find_redeemable_code(self, code_text: str, client_id: str) -> AuthorizationCode:
        """Return an unused, unexpired code of this client, or raise OAuthError 400.

        A reused code only gets the error. The tokens issued for its first use
        stay valid, as with some providers.
        """
        code = self.codes.get(code_text)
        if code is None or code.request.client_id != client_id:
            raise _bad_request(MSG_INVALID_CODE)
        if code.used:
            logger.info("Rejected reused authorization code of client %s", client_id)
            raise _bad_request(MSG_INVALID_CODE)
        if self.now() >= code.expires_at:
            raise _bad_request(MSG_EXPIRED_CODE)
        return code

    def redeem_code(self, code: AuthorizationCode) -> dict[str, str]:
        """Mark the code used, create its grant and return the token response."""
        code.used = True
        now = self.now()
        grant = Grant(
            grant_id=secrets.token_hex(8),
            client_id=code.request.client_id,
            username=code.username,
            scope=code.request.scope,
            created_at=now,
            refresh_token="",
            refresh_issued_at=now,
            refresh_expires_at=now,
        )
        self.grants[grant.grant_id] = grant
        logger.info(
            "Issued grant %s to client %s for user %s",
            grant.grant_id,
            grant.client_id,
            grant.username,
        )
        return self._issue_tokens(grant)

    def find_refreshable_grant(self, refresh_token: str, client_id: str) -> Grant:
        """Return the live grant whose current refresh token this is.

        Raises OAuthError 400 "Invalid Refresh Token" for an unknown, rotated,
        expired or revoked token, or a token of another client.
        """
        grant_id = self.refresh_tokens.get(refresh_token)
        grant = self.grants.get(grant_id) if grant_id is not None else None
        if grant is None or not grant.active:
            raise _bad_request(MSG_INVALID_REFRESH)
        if grant.client_id != client_id:
            logger.info(
                "Rejected refresh token of grant %s sent by client %s",
                grant.grant_id,
                client_id,
            )
            raise _bad_request(MSG_INVALID_REFRESH)
        if self.now() >= grant.refresh_expires_at:
            raise _bad_request(MSG_INVALID_REFRESH)
        return grant

    def rotate(self, grant: Grant) -> dict[str, str]:
        """Replace the grant's refresh token and return the new token response."""
        grant.rotations += 1
        return self._issue_tokens(grant)

    def _issue_tokens(self, grant: Grant) -> dict[str, str]:
        settings = self.settings
        now = self.now()
        self.refresh_tokens.pop(grant.refresh_token, None)
        # NOTE: each rotation restarts the refresh token's full lifetime. UPS's
        # documentation does not say whether rotation keeps the first expiry.
        grant.refresh_token = secrets.token_urlsafe(24)
        grant.refresh_issued_at = now
        grant.refresh_expires_at = now + settings.refresh_token_lifetime
        self.refresh_tokens[grant.refresh_token] = grant.grant_id
        issued_ms = str(int(now * 1000))
        return {
            "token_type": "Bearer",
            "issued_at": issued_ms,
            "client_id": grant.client_id,
            "access_token": self._issue_access_token(grant, now),
            "expires_in": str(settings.access_token_lifetime),
            "refresh_token": grant.refresh_token,
            "refresh_token_expires_in": str(settings.refresh_token_lifetime),
            "refresh_token_issued_at": issued_ms,
            "refresh_token_status": "approved",
            "status": "approved",
        }

    def _issue_access_token(self, grant: Grant, now: float) -> str:
        jti = secrets.token_hex(12)
        expires_at = now + self.settings.access_token_lifetime
        self.access_tokens[jti] = AccessToken(grant.grant_id, expires_at)
        claims = {
            "iss": "ups-sandbox",
            "sub": grant.username,
            "client_id": grant.client_id,
            "iat": int(now),
            "exp": int(expires_at),
            "jti": jti,
        }
        return self.signer.sign(claims)

    def introspect(self, token: str) -> dict[str, Any]:
        """Report whether an access token is valid now, and its claims if so."""
        claims = self.signer.verify(token)
        record = self.access_tokens.get(str(claims.get("jti"))) if claims else None
        grant = self.grants.get(record.grant_id) if record else None
        if claims is None or record is None or grant is None:
            return {"active": False, "reason": "unknown token"}
        if not grant.active:
            return {"active": False, "reason": "grant revoked"}
        if self.now() >= record.expires_at:
            return {"active": False, "reason": "expired"}
        return {"active": True, "claims": claims}

    # Faults and request log

    def take_fault(self, endpoint: FaultEndpoint) -> Fault | None:
        """Consume one use of the oldest fault queued for ``endpoint``."""
        for fault in self.faults:
            if fault.endpoint == endpoint:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def record_request(self, record: RequestRecord) -> None:
        self.requests.append(record)


def sandbox_state(app: Starlette) -> SandboxState:
    """Return the state of an app made by ``create_app``."""
    return cast(SandboxState, app.state.sandbox)


def _state(request: Request) -> SandboxState:
    return cast(SandboxState, request.app.state.sandbox)


# Faults -----------------------------------------------------------------------


async def _apply_fault(state: SandboxState, endpoint: FaultEndpoint) -> Fault | None:
    """Apply the next queued fault for ``endpoint`` and return it.

    A status fault raises its OAuthError before the endpoint does any work. A delay
    fault sleeps in real time, not on the sandbox clock. A drop fault is returned
    for ``_finish`` to apply after the work is done.
    """
    fault = state.take_fault(endpoint)
    if fault is None:
        return None
    logger.info("Applying %s fault to the %s endpoint", fault.kind, endpoint)
    if fault.kind == "status":
        raise _fault_error(fault.status)
    if fault.kind == "delay":
        await asyncio.sleep(fault.delay)
    return fault


class DroppedResponse(Response):
    """Response that closes the connection instead of sending anything.

    It needs the ``ConnectionDropper`` that ``SandboxServer`` installs. Without
    one, or when the connection is not found, it waits ``hang`` seconds, so that
    the client times out, and then sends a 504 envelope.
    """

    def __init__(self, dropper: ConnectionDropper | None, hang: float) -> None:
        super().__init__(status_code=504)
        self._dropper = dropper
        self._hang = hang

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[DROPPED_SCOPE_KEY] = True
        client = scope.get("client")
        dropper = self._dropper
        if dropper is not None and client and dropper((client[0], client[1])):
            await _wait_for_disconnect(receive)
            return
        logger.warning(
            "Cannot close the connection of client %s; delaying the response by %s s",
            client,
            self._hang,
        )
        await asyncio.sleep(self._hang)
        error = OAuthError(504, "10504", "Response dropped by a sandbox fault")
        try:
            await error.to_response()(scope, receive, send)
        except (ClientDisconnect, OSError):
            logger.info("Client %s disconnected before the delayed response", client)


async def _wait_for_disconnect(receive: Receive) -> None:
    """Wait until the server reports the closed connection.

    Returning earlier would make uvicorn send a 500, because it would still
    consider the connection open.
    """
    try:
        async with asyncio.timeout(5):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        logger.warning("Server did not report the dropped connection within 5 s")


def _finish(state: SandboxState, fault: Fault | None, response: Response) -> Response:
    """Return ``response``, or a ``DroppedResponse`` under a drop fault.

    A drop fault withholds the response whatever its status, because the endpoint
    has already done its work (consumed the code or rotated the token).
    """
    if fault is None or fault.kind != "drop":
        return response
    logger.info("Dropping a %s response as a fault requested", response.status_code)
    return DroppedResponse(state.drop_connection, fault.hang)


# Request parsing helpers ------------------------------------------------------


async def _read_oauth_form(request: Request) -> dict[str, str]:
    """Parse a form-encoded OAuth request body.

    Raises OAuthError 400 for another content type, an undecodable body or a
    repeated parameter.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != FORM_CONTENT_TYPE:
        raise _bad_request(f"Invalid Content-Type: expected {FORM_CONTENT_TYPE}")
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_request("Invalid request body: not UTF-8") from exc
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if name in form:
            raise _bad_request(f"Duplicate parameter: {name}")
        form[name] = value
    return form


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise _bad_request(f"Missing parameter: {name}")
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
        raise _invalid_client()
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _invalid_client() from exc
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise _invalid_client()
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
        raise _invalid_client()
    if not hmac.compare_digest(client.client_secret.encode(), secret.encode()):
        logger.info("Rejected wrong client secret for client %s", client_id)
        raise _invalid_client()
    return client


def _check_not_blocked(client: Client) -> None:
    if client.blocked:
        raise OAuthError(403, "10403", MSG_BLOCKED)


def _check_grant_type(form: Mapping[str, str], expected: str) -> None:
    if _required(form, "grant_type") != expected:
        raise _bad_request(f"Invalid grant_type: expected {expected}")


# OAuth endpoints ----------------------------------------------------------------


def _parse_authorize(state: SandboxState, params: QueryParams) -> AuthorizeRequest:
    """Validate an authorize request, raising OAuthError for any problem."""
    client_id = _required(params, "client_id")
    redirect_uri = _required(params, "redirect_uri")
    response_type = _required(params, "response_type")
    client = state.clients.get(client_id)
    if client is None:
        raise _invalid_client()
    _check_not_blocked(client)
    if redirect_uri not in client.redirect_uris:
        logger.info("Rejected redirect URI %s for client %s", redirect_uri, client_id)
        raise _bad_request(MSG_INVALID_REDIRECT)
    if response_type != "code":
        raise _bad_request("Invalid response_type: expected code")
    challenge = params.get("code_challenge") or None
    if challenge is not None and not _PKCE_CHALLENGE.fullmatch(challenge):
        raise _bad_request("Invalid code_challenge: expected 43 base64url characters")
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
    state = _state(request)
    await _apply_fault(state, "authorize")
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
            raise _invalid_client()
        return client, False
    client_id = form.get("client_id")
    if not client_id or not form.get("code_verifier"):
        raise _invalid_client()
    client = state.clients.get(client_id)
    if client is None:
        raise _invalid_client()
    return client, True


def _check_pkce(form: Mapping[str, str], code: AuthorizationCode, pkce: bool) -> None:
    """Check the code verifier against the code's challenge.

    A PKCE-form request for a code issued without a challenge has no client
    authentication at all, so it gets 401.
    """
    challenge = code.request.code_challenge
    if challenge is None:
        if pkce:
            raise _invalid_client()
        return
    verifier = _required(form, "code_verifier")
    if not _PKCE_VERIFIER.fullmatch(verifier):
        raise _bad_request("Invalid code_verifier")
    if not hmac.compare_digest(pkce_challenge(verifier), challenge):
        logger.info("Rejected PKCE verifier for client %s", code.request.client_id)
        raise _bad_request("Invalid code_verifier")


async def _exchange_code(state: SandboxState, request: Request) -> dict[str, str]:
    basic_client = _authenticate_basic(state, request.headers)
    form = await _read_oauth_form(request)
    client, pkce = _authenticate_token_client(state, basic_client, form)
    _check_not_blocked(client)
    _check_grant_type(form, "authorization_code")
    code = state.find_redeemable_code(_required(form, "code"), client.client_id)
    if _required(form, "redirect_uri") != code.request.redirect_uri:
        raise _bad_request(MSG_INVALID_REDIRECT)
    _check_pkce(form, code, pkce)
    return state.redeem_code(code)


async def _refresh_grant(state: SandboxState, request: Request) -> dict[str, str]:
    client = _authenticate_basic(state, request.headers)
    if client is None:
        raise _invalid_client()
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
    state = _state(request)
    fault = await _apply_fault(state, endpoint)
    try:
        body = await handler(state, request)
        response: Response = JSONResponse(body, headers=_NO_STORE)
    except OAuthError as error:
        _log_oauth_error(request, error)
        response = error.to_response()
    return _finish(state, fault, response)


async def token_endpoint(request: Request) -> Response:
    """Exchange an authorization code for tokens."""
    return await _token_request(request, "token", _exchange_code)


async def refresh_endpoint(request: Request) -> Response:
    """Rotate a refresh token and return a new token pair."""
    return await _token_request(request, "refresh", _refresh_grant)


def _log_oauth_error(request: Request, error: OAuthError) -> None:
    logger.info(
        "%s %s returned %s %s: %s",
        request.method,
        request.url.path,
        error.status,
        error.code,
        error.message,
    )


# Sign-in pages ----------------------------------------------------------------


def _message_page(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(pages.message_page(title=title, message=message), status)


def _expired_session_page(step: str) -> HTMLResponse:
    logger.info("Rejected a %s form with an unknown or expired session", step)
    return _message_page(
        400,
        "Sign-in session expired",
        "This sign-in session is invalid or has expired. "
        "Start again from the application.",
    )


def _client_redirect(redirect_uri: str, params: list[tuple[str, str]]) -> Response:
    """Redirect to the client's redirect URI with ``params`` added to its query."""
    if "?" not in redirect_uri:
        separator = "?"
    elif redirect_uri.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return RedirectResponse(
        f"{redirect_uri}{separator}{urlencode(params)}", status_code=302
    )


def _denied_redirect(authorize: AuthorizeRequest) -> Response:
    params = [("error", "access_denied")]
    if authorize.state is not None:
        params.append(("state", authorize.state))
    return _client_redirect(authorize.redirect_uri, params)


def _form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def signin_form(request: Request) -> Response:
    """Show step 1 for the authorize request that matches the query parameters."""
    state = _state(request)
    params = request.query_params
    key = (
        params.get("client_id", ""),
        params.get("redirect_uri", ""),
        params.get("state"),
        params.get("scope") or "read",
    )
    authorize = state.find_authorize_request(key)
    client = state.clients.get(key[0])
    if authorize is None or client is None or params.get("response_type") != "code":
        logger.info("Rejected sign-in link for client %s: no matching request", key[0])
        return _message_page(
            400,
            "Sign-in link not valid",
            "No authorization request matches this sign-in link. "
            "Start again from the application.",
        )
    session = state.start_login_session(authorize)
    page = pages.signin_page(login_session=session.session_id, client_name=client.name)
    return HTMLResponse(page)


def _client_name(state: SandboxState, session: LoginSession) -> str:
    client = state.clients.get(session.request.client_id)
    return client.name if client is not None else session.request.client_id


def _check_signin(
    state: SandboxState, userid: str, agreement: str
) -> tuple[User | None, str]:
    """Return the user that the sign-in form names, or None and the error to show."""
    if agreement != "yes":
        return None, "You must accept the UPS Confidentiality Agreement to continue."
    if not userid:
        return None, "Enter your UPS.com username or email address."
    user = state.find_user(userid)
    if user is None:
        return None, "No UPS.com account matches this username or email address."
    return user, ""


async def signin_submit(request: Request) -> Response:
    """Check the agreement and the username or email, then show the password page."""
    state = _state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "userid")
    if session is None:
        return _expired_session_page("sign-in")
    if _form_text(form, "action") == "cancel":
        state.end_login_session(session)
        return _denied_redirect(session.request)
    userid = _form_text(form, "userid").strip()
    user, error = _check_signin(state, userid, _form_text(form, "agreement"))
    if user is None:
        logger.info(
            "Rejected sign-in for client %s: %s", session.request.client_id, error
        )
        page = pages.signin_page(
            login_session=session.session_id,
            client_name=_client_name(state, session),
            userid=userid,
            error=error,
        )
        return HTMLResponse(page)
    session.username = user.username
    session.step = "password"
    page = pages.password_page(login_session=session.session_id, login=user.username)
    return HTMLResponse(page)


async def password_submit(request: Request) -> Response:
    """Check the password, then show the consent page."""
    state = _state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "password")
    user = state.find_user(session.username or "") if session is not None else None
    if session is None or user is None:
        return _expired_session_page("password")
    password = _form_text(form, "password")
    if not hmac.compare_digest(password.encode(), user.password.encode()):
        logger.info("Wrong password for user %s", user.username)
        page = pages.password_page(
            login_session=session.session_id,
            login=user.username,
            error="The password is incorrect. Try again.",
        )
        return HTMLResponse(page)
    session.step = "consent"
    page = pages.consent_page(
        login_session=session.session_id,
        client_name=_client_name(state, session),
        login=user.username,
        scope=session.request.scope,
    )
    return HTMLResponse(page)


async def consent_submit(request: Request) -> Response:
    """Redirect to the client with a code on Allow, or with access_denied on Deny."""
    state = _state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "consent")
    if session is None or session.username is None:
        return _expired_session_page("consent")
    decision = _form_text(form, "decision")
    if decision not in ("allow", "deny"):
        logger.info("Rejected consent decision %r", decision)
        return _message_page(400, "Choose Allow or Deny", "Choose Allow or Deny.")
    state.end_login_session(session)
    authorize = session.request
    if decision == "deny":
        logger.info("User %s denied client %s", session.username, authorize.client_id)
        return _denied_redirect(authorize)
    code = state.issue_code(authorize, session.username)
    params = [("code", code), ("scope", authorize.scope)]
    if authorize.state is not None:
        params.append(("state", authorize.state))
    return _client_redirect(authorize.redirect_uri, params)


# Control API --------------------------------------------------------------------


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlError(400, "request body must be a JSON object")
    return body


def _text_field(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"{name!r} must be a non-empty string")
    return value


def _number_field(
    body: Mapping[str, Any], name: str, default: float, minimum: float
) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{name!r} must be a number")
    if value < minimum:
        raise ControlError(400, f"{name!r} must be at least {minimum}")
    return float(value)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def create_user(request: Request) -> Response:
    body = await _json_object(request)
    user = User(
        username=_text_field(body, "username"),
        email=_text_field(body, "email"),
        password=_text_field(body, "password"),
    )
    _state(request).add_user(user)
    logger.info("Created user %s", user.username)
    return JSONResponse({"username": user.username, "email": user.email}, 201)


async def change_password(request: Request) -> Response:
    state = _state(request)
    login = request.path_params["login"]
    user = state.find_user(login)
    if user is None:
        raise ControlError(404, f"no user with username or email {login!r}")
    password = _text_field(await _json_object(request), "password")
    grants, codes = state.change_password(user, password)
    logger.info("Changed password of %s and revoked %d grants", user.username, grants)
    body = {"username": user.username, "grants_revoked": grants, "codes_revoked": codes}
    return JSONResponse(body)


def _parse_client(body: Mapping[str, Any]) -> Client:
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ControlError(400, "'redirect_uris' must be a list of strings")
    for uri in uris:
        try:
            validate_redirect_uri(uri)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
    blocked = body.get("blocked", False)
    if not isinstance(blocked, bool):
        raise ControlError(400, "'blocked' must be true or false")
    client_id = _text_field(body, "client_id")
    return Client(
        client_id=client_id,
        client_secret=_text_field(body, "client_secret"),
        redirect_uris=tuple(uris),
        name=_text_field(body, "name", default=client_id),
        blocked=blocked,
    )


async def register_client(request: Request) -> Response:
    client = _parse_client(await _json_object(request))
    replaced = _state(request).register_client(client)
    logger.info("Registered client %s (replaced: %s)", client.client_id, replaced)
    body = {
        "client_id": client.client_id,
        "name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "blocked": client.blocked,
        "replaced": replaced,
    }
    return JSONResponse(body, 200 if replaced else 201)


def _parse_fault(body: Mapping[str, Any], settings: SandboxSettings) -> Fault:
    endpoint = body.get("endpoint")
    if endpoint not in FAULT_ENDPOINTS:
        raise ControlError(400, f"'endpoint' must be one of {list(FAULT_ENDPOINTS)}")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ControlError(400, "'count' must be a positive integer")
    kinds = [k for k in ("status", "delay", "drop_after_commit") if body.get(k)]
    if len(kinds) != 1:
        raise ControlError(
            400, "set exactly one of 'status', 'delay' and 'drop_after_commit'"
        )
    fault = Fault(endpoint=endpoint, kind="status", remaining=count)
    if kinds[0] == "status":
        if body["status"] not in FAULT_STATUSES:
            raise ControlError(400, f"'status' must be one of {list(FAULT_STATUSES)}")
        fault.status = int(body["status"])
    elif kinds[0] == "delay":
        fault.kind = "delay"
        fault.delay = _number_field(body, "delay", 0.0, 0.0)
        if fault.delay > MAX_FAULT_DELAY:
            raise ControlError(400, f"'delay' must be at most {MAX_FAULT_DELAY} s")
    else:
        if endpoint == "authorize":
            raise ControlError(400, "drop_after_commit applies to token and refresh")
        fault.kind = "drop"
        fault.hang = _number_field(body, "hang", settings.drop_hang, 0.0)
    return fault


def _describe_fault(fault: Fault) -> dict[str, Any]:
    return dataclasses.asdict(fault)


async def add_fault(request: Request) -> Response:
    state = _state(request)
    fault = _parse_fault(await _json_object(request), state.settings)
    state.faults.append(fault)
    logger.info(
        "Queued %s fault for %d %s requests",
        fault.kind,
        fault.remaining,
        fault.endpoint,
    )
    return JSONResponse(_describe_fault(fault), 201)


async def list_faults(request: Request) -> Response:
    return JSONResponse([_describe_fault(f) for f in _state(request).faults])


async def clear_faults(request: Request) -> Response:
    state = _state(request)
    cleared = len(state.faults)
    state.faults.clear()
    return JSONResponse({"cleared": cleared})


async def advance_clock(request: Request) -> Response:
    state = _state(request)
    seconds = _number_field(await _json_object(request), "advance", 0.0, 0.0)
    state.advance_clock(seconds)
    return JSONResponse({"now": state.now(), "offset": state.clock_offset})


async def list_requests(request: Request) -> Response:
    records = [dataclasses.asdict(r) for r in _state(request).requests]
    return JSONResponse(records)


async def clear_requests(request: Request) -> Response:
    state = _state(request)
    cleared = len(state.requests)
    state.requests.clear()
    return JSONResponse({"cleared": cleared})


async def list_grants(request: Request) -> Response:
    return JSONResponse([g.describe() for g in _state(request).grants.values()])


async def introspect(request: Request) -> Response:
    token = _text_field(await _json_object(request), "access_token")
    return JSONResponse(_state(request).introspect(token))


async def jwks(request: Request) -> Response:
    return JSONResponse(_state(request).signer.jwks())


async def reset(request: Request) -> Response:
    _state(request).reset()
    logger.info("Reset the sandbox to its initial state")
    return JSONResponse({"status": "reset"})


# Request log and error handlers ---------------------------------------------


def _is_oauth_path(path: str) -> bool:
    return path == "/security" or path.startswith("/security/")


def _field_names(text: str) -> list[str]:
    return [name for name, _ in parse_qsl(text, keep_blank_values=True)]


def _make_record(
    scope: Scope, started: float, body: bytes, status: int | None
) -> RequestRecord:
    headers = Headers(scope=scope)
    content_type = headers.get("content-type")
    form_fields: list[str] = []
    if content_type and content_type.lower().startswith(FORM_CONTENT_TYPE):
        form_fields = _field_names(body.decode("utf-8", "replace"))
    authorization = headers.get("authorization", "")
    return RequestRecord(
        time=started,
        method=scope["method"],
        path=scope["path"],
        status=status,
        dropped=bool(scope.get(DROPPED_SCOPE_KEY)),
        basic_auth=authorization.lower().startswith("basic "),
        content_type=content_type,
        query_fields=_field_names(scope["query_string"].decode("latin-1")),
        form_fields=form_fields,
    )


class RequestLogMiddleware:
    """ASGI middleware that records each request under ``/security``.

    Records keep parameter names and never values, so the log contains no codes,
    tokens or secrets.
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_oauth_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status: int | None = None
        started = self.state.now()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            record = _make_record(scope, started, bytes(body), status)
            self.state.record_request(record)


def _oauth_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OAuthError)
    _log_oauth_error(request, exc)
    return exc.to_response()


def _control_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ControlError)
    logger.info("%s %s failed: %s", request.method, request.url.path, exc.detail)
    return JSONResponse({"detail": exc.detail}, exc.status)


def _http_error_handler(request: Request, exc: Exception) -> Response:
    """Return 404 and 405 as UPS envelopes under /security, as JSON under /_sandbox."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if _is_oauth_path(path):
        error = OAuthError(exc.status_code, f"10{exc.status_code}", exc.detail)
        response: Response = error.to_response()
    elif path.startswith("/_sandbox/"):
        response = JSONResponse({"detail": exc.detail}, exc.status_code)
    else:
        response = PlainTextResponse(exc.detail, exc.status_code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _server_error_handler(request: Request, exc: Exception) -> Response:
    """Return an unexpected error as a 500 envelope under /security."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    if _is_oauth_path(request.url.path):
        return OAuthError(500, "10500", "Internal Server Error").to_response()
    return PlainTextResponse("Internal Server Error", 500)


def _routes() -> list[Route]:
    return [
        Route(AUTHORIZE_PATH, authorize_endpoint, methods=["GET"]),
        Route(TOKEN_PATH, token_endpoint, methods=["POST"]),
        Route(REFRESH_PATH, refresh_endpoint, methods=["POST"]),
        Route(SIGNIN_PATH, signin_form, methods=["GET"]),
        Route(SIGNIN_PATH, signin_submit, methods=["POST"]),
        Route("/lasso/password", password_submit, methods=["POST"]),
        Route("/lasso/consent", consent_submit, methods=["POST"]),
        Route("/_sandbox/health", health, methods=["GET"]),
        Route("/_sandbox/users", create_user, methods=["POST"]),
        Route("/_sandbox/users/{login}/password", change_password, methods=["POST"]),
        Route("/_sandbox/clients", register_client, methods=["POST"]),
        Route("/_sandbox/faults", add_fault, methods=["POST"]),
        Route("/_sandbox/faults", list_faults, methods=["GET"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/clock", advance_clock, methods=["POST"]),
        Route("/_sandbox/requests", list_requests, methods=["GET"]),
        Route("/_sandbox/requests", clear_requests, methods=["DELETE"]),
        Route("/_sandbox/grants", list_grants, methods=["GET"]),
        Route("/_sandbox/introspect", introspect, methods=["POST"]),
        Route("/_sandbox/jwks", jwks, methods=["GET"]),
        Route("/_sandbox/reset", reset, methods=["POST"]),
    ]


def create_app(settings: SandboxSettings | None = None) -> Starlette:
    """Create the sandbox app with a fresh state and a new RSA signing key."""
    state = SandboxState(settings or SandboxSettings())
    app = Starlette(
        routes=_routes(),
        middleware=[Middleware(RequestLogMiddleware, state=state)],
        exception_handlers={
            OAuthError: _oauth_error_handler,
            ControlError: _control_error_handler,
            HTTPException: _http_error_handler,
            Exception: _server_error_handler,
        },
    )
    app.state.sandbox = state
    return app
