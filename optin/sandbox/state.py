"""In-memory data of a sandbox app: clients, users, codes, grants and tokens.

``SandboxState`` also keeps the sandbox clock, the queued faults and the request
log, and ``sandbox_state`` returns the state of an app made by ``create_app``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from starlette.applications import Starlette
from starlette.requests import Request

from .errors import (
    MSG_EXPIRED_CODE,
    MSG_INVALID_CODE,
    MSG_INVALID_REFRESH,
    ControlError,
    bad_request,
)
from .settings import SandboxSettings
from .tokens import TokenSigner, new_authorization_code

logger = logging.getLogger(__name__)

FaultEndpoint = Literal["authorize", "token", "refresh"]
FAULT_ENDPOINTS: tuple[FaultEndpoint, ...] = ("authorize", "token", "refresh")

# Closes the connection of the given (host, port) client without a response.
# Returns False when it has no such connection.
ConnectionDropper = Callable[[tuple[str, int]], bool]


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
    # Error message of a status fault; empty means the usual one for the status.
    message: str = ""
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


# State ----------------------------------------------------------------------


class SandboxState:
    """In-memory clients, users, codes, grants, faults and request log.

    All access happens on the server's event loop thread, so no locks are needed.
    Times come from ``now()``, which ``advance_clock`` moves forward.
    """

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.signer = TokenSigner(settings.rsa_key_bits)
        # Set by the server that runs the app; see ``faults.DroppedResponse``.
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
        for username, email, password in self.settings.users:
            self.add_user(User(username=username, email=email, password=password))

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
            raise bad_request(MSG_INVALID_CODE)
        if code.used:
            logger.info("Rejected reused authorization code of client %s", client_id)
            raise bad_request(MSG_INVALID_CODE)
        if self.now() >= code.expires_at:
            raise bad_request(MSG_EXPIRED_CODE)
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
            raise bad_request(MSG_INVALID_REFRESH)
        if grant.client_id != client_id:
            logger.info(
                "Rejected refresh token of grant %s sent by client %s",
                grant.grant_id,
                client_id,
            )
            raise bad_request(MSG_INVALID_REFRESH)
        if self.now() >= grant.refresh_expires_at:
            raise bad_request(MSG_INVALID_REFRESH)
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


def request_state(request: Request) -> SandboxState:
    """Return the state of the app that serves ``request``."""
    return cast(SandboxState, request.app.state.sandbox)
