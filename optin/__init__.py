"""optin: run the UPS OAuth opt-in lifecycle for many companies at once."""

from __future__ import annotations

import logging

from optin.api import Manager
from optin.config import Settings
from optin.errors import (
    Blocked,
    CallbackError,
    ClientRejected,
    CodeRejected,
    CompanyExists,
    CompanyNotFound,
    ConcurrentUpdate,
    ConfigurationError,
    ConfirmationRequired,
    DatabaseBusy,
    ExpiredState,
    GrantRevoked,
    InvalidRequest,
    InvalidTransition,
    MalformedCallback,
    OptinError,
    RateLimited,
    RefreshInProgress,
    ReplayedCallback,
    ServerError,
    StoreError,
    SupersededState,
    TransientError,
    UnknownState,
    UPSConnectionError,
    UPSError,
    UPSTimeout,
    UsageError,
)
from optin.lifecycle import TRANSITIONS, State, Transition
from optin.models import (
    AuthorizationLink,
    CallbackResult,
    Company,
    HistoryEntry,
    SweepReport,
)
from optin.secret import Secret

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "TRANSITIONS",
    "AuthorizationLink",
    "Blocked",
    "CallbackError",
    "CallbackResult",
    "ClientRejected",
    "CodeRejected",
    "Company",
    "CompanyExists",
    "CompanyNotFound",
    "ConcurrentUpdate",
    "ConfigurationError",
    "ConfirmationRequired",
    "DatabaseBusy",
    "ExpiredState",
    "GrantRevoked",
    "HistoryEntry",
    "InvalidRequest",
    "InvalidTransition",
    "MalformedCallback",
    "Manager",
    "OptinError",
    "RateLimited",
    "RefreshInProgress",
    "ReplayedCallback",
    "Secret",
    "ServerError",
    "Settings",
    "State",
    "StoreError",
    "SupersededState",
    "SweepReport",
    "TransientError",
    "Transition",
    "UPSConnectionError",
    "UPSError",
    "UPSTimeout",
    "UnknownState",
    "UsageError",
]
