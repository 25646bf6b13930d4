"""The UPS OAuth client: authorization URL, code exchange and refresh.

This is the only module that sends HTTP requests to UPS. It has no notion of
companies or the database. UPS's wire format has quirks this module absorbs:

- the token JSON carries every number as a string (``"expires_in": "3599"``),
  and ``issued_at`` is in milliseconds while lifetimes are in seconds;
- errors come as ``{"response": {"errors": [{"code", "message"}]}}``;
- refresh has its own path (``/security/v1/oauth/refresh``) and always needs
  HTTP Basic auth, while a PKCE code exchange sends ``client_id`` and
  ``code_verifier`` in the body and no Authorization header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode

import httpx

from optin import errors
from optin.config import Settings
from optin.secret import Secret

logger = logging.getLogger(__name__)

AUTHORIZE_PATH: Final = "/security/v1/oauth/authorize"
TOKEN_PATH: Final = "/security/v1/oauth/token"  # noqa: S105
REFRESH_PATH: Final = "/security/v1/oauth/refresh"
# The message UPS sends with 400/10400 when a refresh token is dead.
DEAD_REFRESH_MESSAGE: Final = "invalid refresh token"
REDIRECT_MESSAGE: Final = "invalid redirect url"


def make_pkce_pair() -> tuple[Secret, str]:
    """Return a new PKCE verifier and its S256 challenge (UPS supports S256 only)."""
    verifier = secrets.token_urlsafe(64)
    return Secret(verifier), pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, repr=False)
class TokenSet:
    """A parsed UPS token response, with expiry instants in UTC."""

    access_token: Secret
    refresh_token: Secret
    token_type: str
    issued_at: datetime
    expires_at: datetime
    refresh_issued_at: datetime
    refresh_expires_at: datetime
    scope: str | None
    status: str | None

    def __repr__(self) -> str:
        return (
            f"TokenSet(token_type={self.token_type!r}, "
            f"expires_at={self.expires_at.isoformat()!r}, "
            f"refresh_expires_at={self.refresh_expires_at.isoformat()!r})"
        )

    @classmethod
    def from_response(cls, body: dict[str, Any], now: datetime) -> TokenSet:
        """Parse UPS's token JSON, accepting numbers as strings or as numbers."""
        try:
            access = _token(body, "access_token")
            refresh = _token(body, "refresh_token")
            expires_in = _seconds(body, "expires_in")
            refresh_expires_in = _seconds(body, "refresh_token_expires_in")
        except KeyError as exc:
            raise errors.InvalidRequest(
                200,
                "",
                f"token response lacks the field {exc.args[0]}",
                "check the base URL points at UPS's OAuth API",
            ) from None
        issued = _instant_ms(body.get("issued_at"), now)
        refresh_issued = _instant_ms(body.get("refresh_token_issued_at"), issued)
        try:
            expires_at = issued + timedelta(seconds=expires_in)
            refresh_expires_at = refresh_issued + timedelta(seconds=refresh_expires_in)
        except OverflowError:
            raise errors.InvalidRequest(
                200,
                "",
                "token response expiry is out of range: issued_at, "
                "refresh_token_issued_at or a lifetime is too large",
                "report this response to UPS",
            ) from None
        return cls(
            access_token=Secret(access),
            refresh_token=Secret(refresh),
            token_type=str(body.get("token_type", "Bearer")),
            issued_at=issued,
            expires_at=expires_at,
            refresh_issued_at=refresh_issued,
            refresh_expires_at=refresh_expires_at,
            scope=_optional_str(body.get("scope")),
            status=_optional_str(body.get("status")),
        )


def _token(body: dict[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value:
        raise errors.InvalidRequest(
            200,
            "",
            f"token response field {name} is not a non-empty string",
            "report this response to UPS",
        )
    return value


def _seconds(body: dict[str, Any], name: str) -> float:
    value = body[name]
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise errors.InvalidRequest(
            200,
            "",
            f"token response field {name} is not a finite, non-negative number: "
            f"{value!r}",
            "report this response to UPS",
        )
    return seconds


def _instant_ms(value: object, default: datetime) -> datetime:
    if value in (None, ""):
        return default
    try:
        return datetime.fromtimestamp(float(str(value)) / 1000.0, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return default


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


class UPSClient:
    """A synchronous client for UPS's OAuth endpoints, for one UPS app."""

    def __init__(self, settings: Settings, http: httpx.Client | None = None) -> None:
        self.settings = settings
        self._http = http or httpx.Client(
            base_url=settings.base_url, timeout=settings.timeout
        )

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return (
            f"UPSClient(base_url={self.settings.base_url!r}, "
            f"client_id={self.settings.client_id!r})"
        )

    def authorization_url(self, state: str, code_challenge: str) -> str:
        """Build the URL that sends an admin to UPS.com to sign in and consent."""
        query = urlencode(
            {
                "client_id": self.settings.client_id,
                "redirect_uri": self.settings.redirect_uri,
                "response_type": "code",
                "state": state,
                "scope": self.settings.scope,
                "code_challenge": code_challenge,
            }
        )
        return f"{self.settings.base_url.rstrip('/')}{AUTHORIZE_PATH}?{query}"

    def exchange_code(
        self, code: Secret, redirect_uri: str, verifier: Secret
    ) -> TokenSet:
        """Exchange an authorization code for tokens (PKCE: no Basic header)."""
        form = {
            "grant_type": "authorization_code",
            "code": code.reveal(),
            "redirect_uri": redirect_uri,
            "client_id": self.settings.client_id,
            "code_verifier": verifier.reveal(),
        }
        return self._post_for_tokens(TOKEN_PATH, form, auth=None, kind="exchange")

    def refresh(self, refresh_token: Secret) -> TokenSet:
        """Refresh at UPS's own refresh path; the returned pair replaces the old one."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal()}
        auth = httpx.BasicAuth(
            self.settings.client_id, self.settings.client_secret.reveal()
        )
        return self._post_for_tokens(REFRESH_PATH, form, auth=auth, kind="refresh")

    def _post_for_tokens(
        self,
        path: str,
        form: dict[str, str],
        auth: httpx.BasicAuth | None,
        kind: str,
    ) -> TokenSet:
        now = datetime.now(UTC)
        logger.debug("sending UPS %s to %s%s", kind, self.settings.base_url, path)
        try:
            response = self._http.post(
                path,
                data=form,
                auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        except httpx.TimeoutException:
            raise errors.UPSTimeout(
                f"UPS {kind} at {self.settings.base_url}{path} timed out after "
                f"{self.settings.timeout:g} s. {_AFTER_TRANSIENT[kind]}"
            ) from None
        except httpx.HTTPError as exc:
            # Connection trouble, or a response that httpx could not decode.
            raise errors.UPSConnectionError(
                f"UPS {kind} at {self.settings.base_url}{path} failed with "
                f"{type(exc).__name__}; check the network and the base URL. "
                f"{_AFTER_TRANSIENT[kind]}"
            ) from None
        logger.info("UPS %s returned HTTP %s", kind, response.status_code)
        if response.status_code != 200:
            raise error_from_response(response, kind)
        try:
            body = response.json()
        except json.JSONDecodeError:
            raise errors.ServerError(
                response.status_code,
                "",
                "the body is not JSON",
                "UPS sent an unreadable answer; retry later",
            ) from None
        if not isinstance(body, dict):
            raise errors.InvalidRequest(
                response.status_code,
                "",
                "the token response is not a JSON object",
                "check the base URL points at UPS's OAuth API",
            )
        return TokenSet.from_response(body, now)


# The next step for a caller after a timeout or 5xx. A code exchange may have
# reached UPS, which treats codes as single-use, so the code is never resent.
_AFTER_TRANSIENT: Final = {
    "refresh": "The stored tokens are kept; retry later",
    "exchange": "UPS may have used the code, so it is not resent; begin a new "
    "opt-in for the company",
}


def read_envelope(response: httpx.Response) -> tuple[str, str]:
    """Return (code, message) of UPS's first error, or empty strings."""
    try:
        body = response.json()
        first = body["response"]["errors"][0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""


def error_from_response(response: httpx.Response, kind: str) -> errors.UPSError:
    """Map a non-200 UPS response onto the toolkit's typed errors."""
    status = response.status_code
    code, message = read_envelope(response)
    lowered = message.lower()

    if status == 429:
        return errors.RateLimited(
            status, code, message, "UPS is rate limiting; back off and retry later"
        )
    if status >= 500:
        return errors.ServerError(
            status, code, message, f"UPS had a server error. {_AFTER_TRANSIENT[kind]}"
        )
    if status == 403:
        return errors.Blocked(
            status,
            code,
            message,
            "UPS blocked this app (not retryable); contact UPS about the account",
        )
    if status == 401:
        return errors.ClientRejected(
            status,
            code,
            message,
            "UPS rejected the client credentials; check OPTIN_CLIENT_ID, "
            "OPTIN_CLIENT_SECRET and that they belong to this environment. "
            "No company is at fault",
        )
    if status == 400 and REDIRECT_MESSAGE in lowered:
        return errors.ClientRejected(
            status,
            code,
            message,
            "the redirect URI is not registered for this app or differs from "
            "the one used at authorize time; check OPTIN_REDIRECT_URI",
        )
    if status == 400 and kind == "refresh" and DEAD_REFRESH_MESSAGE in lowered:
        return errors.GrantRevoked(
            status,
            code,
            message,
            "the grant is dead (password change, expiry or reuse); the company "
            "needs a new opt-in",
        )
    if status == 400 and kind == "exchange":
        return errors.CodeRejected(
            status,
            code,
            message,
            "the authorization code is invalid, expired or already used; "
            "begin a new opt-in",
        )
    # Any other 400 (or 404 from a wrong base URL) does not show that the
    # company's grant is dead, so its tokens are kept.
    return errors.InvalidRequest(
        status,
        code,
        message,
        f"UPS rejected the {kind} request; the stored tokens are kept. Check "
        "OPTIN_BASE_URL and report the message if it persists",
    )
