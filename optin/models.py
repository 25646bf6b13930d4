"""Plain records that the API returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optin.errors import OptinError
from optin.lifecycle import State, allowed_triggers


@dataclass(frozen=True)
class Company:
    id: str
    name: str
    admin_email: str | None
    state: State
    version: int
    created_at: str
    updated_at: str
    # None unless the company has stored tokens (state authorized).
    access_expires_at: str | None = None
    refresh_expires_at: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Company:
        return cls(
            id=row["id"],
            name=row["name"],
            admin_email=row["admin_email"],
            state=State(row["state"]),
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            access_expires_at=row.get("access_expires_at"),
            refresh_expires_at=row.get("refresh_expires_at"),
        )

    @property
    def allowed_triggers(self) -> tuple[str, ...]:
        return allowed_triggers(self.state)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "admin_email": self.admin_email,
            "state": self.state.value,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "access_expires_at": self.access_expires_at,
            "refresh_expires_at": self.refresh_expires_at,
        }


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    company_id: str
    from_state: str | None
    to_state: str
    trigger: str
    actor: str
    reason: str | None
    at: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "company_id": self.company_id,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "trigger": self.trigger,
            "actor": self.actor,
            "reason": self.reason,
            "at": self.at,
            "details": self.details,
        }


@dataclass(frozen=True)
class AuthorizationLink:
    """A link that sends a company's admin to UPS.com to opt in.

    The URL carries the ``state`` value that the callback must return; hand it
    only to the company's admin.
    """

    company_id: str
    url: str
    expires_at: datetime

    def __repr__(self) -> str:
        return (
            f"AuthorizationLink(company_id={self.company_id!r}, "
            f"expires_at={self.expires_at.isoformat()!r})"
        )


@dataclass(frozen=True)
class CallbackResult:
    """Outcome of completing a callback: authorized, cancelled or replayed."""

    company_id: str
    outcome: str
    company: Company
    message: str


@dataclass
class SweepReport:
    """The result of a refresh sweep over many companies."""

    refreshed: list[str] = field(default_factory=list)
    invalidated: list[str] = field(default_factory=list)
    # company id -> short error text (never a secret)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    stopped_reason: str | None = None
    # The error that stopped the sweep, when one company's error did.
    stop_error: OptinError | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "refreshed": self.refreshed,
            "invalidated": self.invalidated,
            "failed": self.failed,
            "skipped": self.skipped,
            "stopped_reason": self.stopped_reason,
        }
