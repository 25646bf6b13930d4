"""The toolkit's exceptions, one tree under :class:`OptinError`.

::

    OptinError
    ├── UsageError                  the caller asked for something invalid
    │   ├── InvalidTransition       trigger not allowed in the company's state
    │   ├── CompanyNotFound
    │   ├── CompanyExists
    │   ├── ConfirmationRequired    opt-out without confirm=True
    │   └── CallbackError           the callback URL cannot complete an opt-in
    │       ├── MalformedCallback
    │       ├── UnknownState        forged, mistyped or never issued
    │       ├── SupersededState     a newer link replaced this one
    │       ├── ExpiredState
    │       └── ReplayedCallback    the link was already used with another code
    ├── ConfigurationError          settings, credentials or key file
    ├── StoreError
    │   ├── ConcurrentUpdate        another process changed the company first
    │   └── DatabaseBusy            the database stayed locked
    ├── TransientError              try again later; tokens are kept
    │   ├── UPSTimeout
    │   ├── UPSConnectionError
    │   └── RefreshInProgress       another worker holds the company's refresh
    └── UPSError                    UPS returned its error envelope
        ├── GrantRevoked            the refresh token is dead: a new opt-in is needed
        ├── CodeRejected            the authorization code is invalid or used
        ├── InvalidRequest          any other 400
        ├── ClientRejected          401 or bad redirect URI (also ConfigurationError)
        ├── Blocked                 403
        ├── RateLimited             429 (also TransientError)
        └── ServerError             5xx (also TransientError)

No message in this tree contains a token, code, verifier or client secret.
"""

from __future__ import annotations

from collections.abc import Iterable


class OptinError(Exception):
    """Root of every error that optin raises on purpose."""


class UsageError(OptinError):
    """The caller requested something that the current data does not allow."""


class InvalidTransition(UsageError):
    def __init__(
        self, company_id: str, trigger: str, state: str, allowed: Iterable[str]
    ) -> None:
        self.company_id = company_id
        self.trigger = trigger
        self.state = state
        self.allowed = tuple(allowed)
        choices = ", ".join(self.allowed) or "none"
        super().__init__(
            f"cannot {trigger} company_id={company_id!r}: its state is "
            f"{state!r}, where the allowed triggers are: {choices}"
        )


class CompanyNotFound(UsageError):
    def __init__(self, company_id: str) -> None:
        self.company_id = company_id
        super().__init__(
            f"company_id={company_id!r} not found; add it first "
            "(optin add or Manager.add_company) or check the spelling"
        )


class CompanyExists(UsageError):
    def __init__(self, company_id: str) -> None:
        self.company_id = company_id
        super().__init__(f"company_id={company_id!r} already exists")


class ConfirmationRequired(UsageError):
    def __init__(self, company_id: str) -> None:
        self.company_id = company_id
        super().__init__(
            f"opting out company_id={company_id!r} deletes its tokens and cannot "
            "be undone at UPS; pass confirm=True (CLI: --yes) to proceed"
        )


class CallbackError(UsageError):
    """The callback URL cannot complete an opt-in."""


class MalformedCallback(CallbackError):
    pass


class UnknownState(CallbackError):
    pass


class SupersededState(CallbackError):
    pass


class ExpiredState(CallbackError):
    pass


class ReplayedCallback(CallbackError):
    pass


class ConfigurationError(OptinError):
    """Settings, credentials or the token key are missing or wrong."""


class StoreError(OptinError):
    pass


class ConcurrentUpdate(StoreError):
    def __init__(self, company_id: str, trigger: str) -> None:
        self.company_id = company_id
        self.trigger = trigger
        super().__init__(
            f"{trigger} on company_id={company_id!r} lost a race: another process "
            "changed the company first; read its state again and retry if "
            "still needed"
        )


class DatabaseBusy(StoreError):
    pass


class TransientError(OptinError):
    """Temporary trouble; the stored tokens are kept and a retry may work."""


class UPSTimeout(TransientError):
    pass


class UPSConnectionError(TransientError):
    pass


class RefreshInProgress(TransientError):
    pass


class UPSError(OptinError):
    """UPS returned an error envelope or an error status."""

    def __init__(self, status: int, code: str, message: str, action: str) -> None:
        self.status = status
        self.code = code
        self.ups_message = message
        super().__init__(
            f"UPS returned HTTP {status} (code {code or '-'}: {message or '-'}); "
            f"{action}"
        )


class GrantRevoked(UPSError):
    def __init__(self, status: int, code: str, message: str, action: str) -> None:
        super().__init__(status, code, message, action)
        # False when a sweep's invalidation limit kept the company authorized.
        self.company_invalidated = True


class CodeRejected(UPSError):
    pass


class InvalidRequest(UPSError):
    pass


class ClientRejected(UPSError, ConfigurationError):
    pass


class Blocked(UPSError):
    pass


class RateLimited(UPSError, TransientError):
    pass


class ServerError(UPSError, TransientError):
    pass
