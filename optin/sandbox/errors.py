"""Errors of the sandbox's OAuth endpoints and of its control API.

``OAuthError`` renders UPS's JSON error envelope
``{"response": {"errors": [{"code": ..., "message": ...}]}}``.
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

MSG_INVALID_CLIENT = "ClientId is Invalid"
MSG_INVALID_REDIRECT = "Invalid Redirect URL"
MSG_INVALID_REFRESH = "Invalid Refresh Token"
MSG_INVALID_CODE = "Invalid Authorization Code"
MSG_EXPIRED_CODE = "Authorization Code Expired"
MSG_BLOCKED = "Blocked Merchant"


class OAuthError(Exception):
    """Error that an OAuth endpoint returns in UPS's JSON envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_response(self) -> JSONResponse:
        body = {"response": {"errors": [{"code": self.code, "message": self.message}]}}
        return JSONResponse(body, status_code=self.status, headers=NO_STORE)


class ControlError(Exception):
    """Invalid request to the ``/_sandbox`` control API."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def bad_request(message: str) -> OAuthError:
    return OAuthError(400, "10400", message)


def invalid_client() -> OAuthError:
    return OAuthError(401, "10401", MSG_INVALID_CLIENT)


def fault_error(status: int, message: str = "") -> OAuthError:
    if status == 429:
        return OAuthError(429, "10429", message or "Rate Limit Exceeded")
    if status == 401:
        return OAuthError(401, "10401", message or "ClientId is Invalid")
    if status == 403:
        return OAuthError(403, "10403", message or "Blocked Merchant")
    return OAuthError(status, f"10{status}", message or HTTPStatus(status).phrase)
