"""The SQLite store: the only module that writes SQL.

One file contains companies, grants (encrypted tokens), pending authorizations
(hashed ``state``, encrypted PKCE verifier) and an append-only history.
Every transition runs in one ``BEGIN IMMEDIATE`` transaction that
compare-and-sets the company's (state, version), so two processes can never
both apply it. Triggers in the schema reject any UPDATE or DELETE of history.

sqlite-utils builds the schema, runs bulk loads and reads; the per-transition
path uses fixed SQL through ``execute`` because the helpers read the schema on
every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlite_utils
from cryptography.fernet import Fernet, InvalidToken

from optin.errors import (
    CompanyExists,
    CompanyNotFound,
    ConcurrentUpdate,
    ConfigurationError,
    DatabaseBusy,
    StoreError,
    UsageError,
)
from optin.secret import Secret

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 5000
KEY_CHECK: Final = b"optin key check"


def check_actor(actor: str) -> None:
    """Reject an actor that the history could not name."""
    if not isinstance(actor, str) or not actor.strip() or actor != actor.strip():
        raise UsageError(
            f"invalid actor={actor!r}: name who makes the change (--actor, "
            "OPTIN_ACTOR or actor=), without leading or trailing spaces"
        )


def utc_text(moment: datetime) -> str:
    """Format an instant as fixed-width ISO 8601 UTC, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def digest(value: str) -> str:
    """Hash a random value (state, code) so the database never contains it."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class GrantRecord:
    access_token: Secret
    refresh_token: Secret
    token_type: str
    scope: str | None
    issued_at: datetime
    access_expires_at: datetime
    refresh_expires_at: datetime


@dataclass(frozen=True)
class PendingRecord:
    state_hash: str
    company_id: str
    redirect_uri: str
    origin_state: str
    status: str
    code_hash: str | None
    created_at: datetime
    expires_at: datetime
    verifier: Secret
    # When the code exchange began; None unless one did.
    claimed_at: datetime | None = None


# Named migrations, applied in order and recorded in the _migrations table.
def _m001_initial(db: sqlite_utils.Database) -> None:
    db.table("companies").create(
        {
            "id": str,
            "name": str,
            "admin_email": str,
            "state": str,
            "version": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "state", "version", "created_at", "updated_at"},
    )
    db.table("companies").create_index(["state"])
    db.table("grants").create(
        {
            "company_id": str,
            "access_token": str,
            "refresh_token": str,
            "token_type": str,
            "scope": str,
            "issued_at": str,
            "access_expires_at": str,
            "refresh_expires_at": str,
            "refresh_count": int,
            "lease_owner": str,
            "lease_until": str,
            "updated_at": str,
        },
        pk="company_id",
        foreign_keys=[("company_id", "companies", "id")],
    )
    db.table("pending").create(
        {
            "state_hash": str,
            "company_id": str,
            "verifier": str,
            "redirect_uri": str,
            "origin_state": str,
            "status": str,
            "code_hash": str,
            "created_at": str,
            "expires_at": str,
            "closed_at": str,
        },
        pk="state_hash",
        foreign_keys=[("company_id", "companies", "id")],
    )
    db.table("pending").create_index(["company_id", "status"])
    db.table("history").create(
        {
            "id": int,
            "company_id": str,
            "from_state": str,
            "to_state": str,
            "trigger": str,
            "actor": str,
            "reason": str,
            "at": str,
            "details": str,
        },
        pk="id",
        not_null={"company_id", "to_state", "trigger", "actor", "at"},
    )
    db.table("history").create_index(["company_id", "id"])
    for action in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER history_no_{action.lower()} BEFORE {action} ON history "
            "BEGIN SELECT RAISE(ABORT, 'history rows are append-only'); END"
        )
    db.table("meta").create({"name": str, "value": str}, pk="name")


def _m002_pending_claimed_at(db: sqlite_utils.Database) -> None:
    # When a code exchange began, so that one cut short by a killed process
    # can be recognised and closed instead of blocking the link forever.
    db.table("pending").add_column("claimed_at", str)


MIGRATIONS: Final[tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...]] = (
    ("001_initial", _m001_initial),
    ("002_pending_claimed_at", _m002_pending_claimed_at),
)


class Store:
    """One SQLite file. Thread-safe: a lock serializes use of the connection."""

    def __init__(
        self,
        path: Path | str,
        fernet: Fernet,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.path = Path(path)
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fernet = fernet
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open database {self.path}: {exc}. Check that the path "
                "names a file, not a folder, in a writable folder"
            ) from None
        self.conn.row_factory = sqlite3.Row
        try:
            self._prepare()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(
                f"cannot open database {self.path}: {exc}. Check that the path "
                "names an optin database (or a new file) in a writable folder"
            ) from None
        except BaseException:
            self.conn.close()
            raise

    def _prepare(self) -> None:
        for pragma in (
            "journal_mode=WAL",
            # FULL: a committed rotated refresh token must survive a power cut,
            # because UPS has already killed the previous one.
            "synchronous=FULL",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        self.db = sqlite_utils.Database(self.conn)
        self.migrate()
        self._check_key()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def __repr__(self) -> str:
        return f"Store(path={str(self.path)!r})"

    def now(self) -> datetime:
        return self.clock()

    # -- schema -----------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the named migrations not yet recorded; return their names."""
        applied: list[str] = []
        with self.immediate():
            if not self.db.table("_migrations").exists():
                self.db.table("_migrations").create(
                    {"name": str, "applied_at": str}, pk="name"
                )
            done = {row["name"] for row in self.db.table("_migrations").rows}
            for name, migration in MIGRATIONS:
                if name in done:
                    continue
                migration(self.db)
                self.conn.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (name, utc_text(self.now())),
                )
                applied.append(name)
        for name in applied:
            logger.info("applied migration %s to %s", name, self.path)
        return applied

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, name: str, value: str) -> None:
        with self.immediate():
            self.conn.execute(
                "INSERT INTO meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def _check_key(self) -> None:
        row = self.conn.execute(
            "SELECT value FROM meta WHERE name='key_check'"
        ).fetchone()
        if row is None:
            with self.immediate():
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('key_check', ?)",
                    (self._fernet.encrypt(KEY_CHECK).decode("ascii"),),
                )
            return
        try:
            self._fernet.decrypt(row["value"].encode("ascii"))
        except InvalidToken:
            raise ConfigurationError(
                f"the token key does not match the database {self.path}; use the "
                "key file or OPTIN_KEY that created it"
            ) from None

    # -- transactions -----------------------------------------------------

    @contextmanager
    def immediate(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one BEGIN IMMEDIATE transaction; roll back on error."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _busy_error(exc, self.path) from None
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self.conn.execute("ROLLBACK")
                raise _busy_error(exc, self.path) from None

    def move(
        self,
        company_id: str,
        trigger: str,
        from_state: str,
        version: int,
        to_state: str,
        actor: str,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Compare-and-set the company's state and append its history row.

        Call inside :meth:`immediate`. Raises ConcurrentUpdate when the
        company's (state, version) is no longer (``from_state``, ``version``).
        """
        check_actor(actor)
        at = utc_text(self.now())
        cursor = self.conn.execute(
            "UPDATE companies SET state = ?, version = version + 1, updated_at = ? "
            "WHERE id = ? AND state = ? AND version = ?",
            (to_state, at, company_id, from_state, version),
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdate(company_id, trigger)
        self.conn.execute(
            "INSERT INTO history (company_id, from_state, to_state, trigger, actor, "
            "reason, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                company_id,
                from_state,
                to_state,
                trigger,
                actor,
                reason,
                at,
                json.dumps(details, sort_keys=True) if details else None,
            ),
        )

    # -- companies ----------------------------------------------------------

    def add_companies(
        self, rows: Iterable[dict[str, str]], actor: str, reason: str | None
    ) -> int:
        """Insert new companies in state ``unauthorized``, each with a history row."""
        check_actor(actor)
        at = utc_text(self.now())
        companies = [
            {
                "id": row["id"],
                "name": row["name"],
                "admin_email": row.get("admin_email") or None,
                "state": "unauthorized",
                "version": 0,
                "created_at": at,
                "updated_at": at,
            }
            for row in rows
        ]
        history = [
            {
                "company_id": c["id"],
                "from_state": None,
                "to_state": "unauthorized",
                "trigger": "add",
                "actor": actor,
                "reason": reason,
                "at": at,
                "details": None,
            }
            for c in companies
        ]
        with self.immediate():
            try:
                self.db.table("companies").insert_all(companies, batch_size=500)
            except sqlite3.IntegrityError:
                raise CompanyExists(self._first_existing(companies)) from None
            self.db.table("history").insert_all(history, batch_size=500)
        return len(companies)

    def _first_existing(self, companies: list[dict[str, Any]]) -> str:
        seen: set[str] = set()
        for company in companies:
            if company["id"] in seen or self.get_company(company["id"]) is not None:
                return str(company["id"])
            seen.add(company["id"])
        return "?"

    def get_company(self, company_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.conn.execute(
                _COMPANY_SELECT + " WHERE c.id = ?", (company_id,)
            ).fetchone()
        return dict(row) if row is not None else None

    def require_company(self, company_id: str) -> dict[str, Any]:
        company = self.get_company(company_id)
        if company is None:
            raise CompanyNotFound(company_id)
        return company

    def list_companies(
        self, state: str | None = None, search: str | None = None
    ) -> list[dict[str, Any]]:
        clauses, params = [], []
        if state:
            clauses.append("c.state = ?")
            params.append(state)
        if search:
            # Escape LIKE's wildcards so that "100%" matches literally.
            pattern = re.sub(r"([\\%_])", r"\\\1", search)
            clauses.append(
                "(c.id LIKE ? ESCAPE '\\' OR c.name LIKE ? ESCAPE '\\' "
                "OR c.admin_email LIKE ? ESCAPE '\\')"
            )
            params.extend([f"%{pattern}%"] * 3)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self.conn.execute(_COMPANY_SELECT + where + " ORDER BY c.id", params)
            return [dict(row) for row in rows]

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT state, COUNT(*) AS n FROM companies GROUP BY state"
            ).fetchall()
        return {row["state"]: row["n"] for row in rows}

    def history(
        self, company_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM history"
        params: list[Any] = []
        if company_id is not None:
            sql += " WHERE company_id = ?"
            params.append(company_id)
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            rows = [dict(row) for row in self.conn.execute(sql, params)]
        for row in rows:
            row["details"] = json.loads(row["details"]) if row["details"] else {}
        return rows

    # -- grants -------------------------------------------------------------

    def put_grant(self, company_id: str, grant: GrantRecord, refreshed: bool) -> None:
        """Insert or replace the company's tokens. Call inside :meth:`immediate`."""
        at = utc_text(self.now())
        self.conn.execute(
            "INSERT INTO grants (company_id, access_token, refresh_token, token_type, "
            "scope, issued_at, access_expires_at, refresh_expires_at, refresh_count, "
            "lease_owner, lease_until, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?) "
            "ON CONFLICT (company_id) DO UPDATE SET "
            "access_token = excluded.access_token, "
            "refresh_token = excluded.refresh_token, "
            "token_type = excluded.token_type, "
            "scope = excluded.scope, issued_at = excluded.issued_at, "
            "access_expires_at = excluded.access_expires_at, "
            "refresh_expires_at = excluded.refresh_expires_at, "
            "refresh_count = grants.refresh_count + ?, lease_owner = NULL, "
            "lease_until = NULL, updated_at = excluded.updated_at",
            (
                company_id,
                self._encrypt(grant.access_token),
                self._encrypt(grant.refresh_token),
                grant.token_type,
                grant.scope,
                utc_text(grant.issued_at),
                utc_text(grant.access_expires_at),
                utc_text(grant.refresh_expires_at),
                at,
                1 if refreshed else 0,
            ),
        )

    def delete_grant(self, company_id: str) -> bool:
        """Delete the company's tokens. Call inside :meth:`immediate`."""
        cursor = self.conn.execute(
            "DELETE FROM grants WHERE company_id = ?", (company_id,)
        )
        return cursor.rowcount > 0

    def get_grant(self, company_id: str) -> GrantRecord | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT * FROM grants WHERE company_id = ?", (company_id,)
            ).fetchone()
        if row is None:
            return None
        return GrantRecord(
            access_token=self._decrypt(row["access_token"]),
            refresh_token=self._decrypt(row["refresh_token"]),
            token_type=row["token_type"],
            scope=row["scope"],
            issued_at=parse_utc(row["issued_at"]),
            access_expires_at=parse_utc(row["access_expires_at"]),
            refresh_expires_at=parse_utc(row["refresh_expires_at"]),
        )

    def count_grants(self, company_id: str | None = None) -> int:
        sql, params = "SELECT COUNT(*) FROM grants", []
        if company_id is not None:
            sql, params = sql + " WHERE company_id = ?", [company_id]
        with self._lock:
            return int(self.conn.execute(sql, params).fetchone()[0])

    def claim_refresh(self, company_id: str, owner: str, until: datetime) -> bool:
        """Take the company's refresh lease unless another live lease holds it.

        The lease keeps two workers from sending the same refresh token, to which
        UPS would respond by killing one of them with "Invalid Refresh Token".
        """
        now = utc_text(self.now())
        with self.immediate():
            cursor = self.conn.execute(
                "UPDATE grants SET lease_owner = ?, lease_until = ? "
                "WHERE company_id = ? AND (lease_until IS NULL OR lease_until < ?)",
                (owner, utc_text(until), company_id, now),
            )
        return cursor.rowcount == 1

    def release_refresh(self, company_id: str, owner: str) -> None:
        with self.immediate():
            self.conn.execute(
                "UPDATE grants SET lease_owner = NULL, lease_until = NULL "
                "WHERE company_id = ? AND lease_owner = ?",
                (company_id, owner),
            )

    # -- pending authorizations ---------------------------------------------

    def insert_pending(
        self,
        state: str,
        company_id: str,
        verifier: Secret,
        redirect_uri: str,
        origin_state: str,
        expires_at: datetime,
    ) -> None:
        """Record a new authorization link. Call inside :meth:`immediate`."""
        self.conn.execute(
            "INSERT INTO pending (state_hash, company_id, verifier, redirect_uri, "
            "origin_state, status, code_hash, created_at, expires_at, closed_at) "
            "VALUES (?, ?, ?, ?, ?, 'open', NULL, ?, ?, NULL)",
            (
                digest(state),
                company_id,
                self._encrypt(verifier),
                redirect_uri,
                origin_state,
                utc_text(self.now()),
                utc_text(expires_at),
            ),
        )

    def close_open_pending(self, company_id: str, status: str) -> int:
        """Mark every open link of the company closed. Call inside :meth:`immediate`."""
        cursor = self.conn.execute(
            "UPDATE pending SET status = ?, closed_at = ? "
            "WHERE company_id = ? AND status IN ('open', 'exchanging')",
            (status, utc_text(self.now()), company_id),
        )
        return cursor.rowcount

    def set_pending_status(
        self, state_hash: str, status: str, expected: str, code_hash: str | None = None
    ) -> bool:
        """Compare-and-set one link's status. Call inside :meth:`immediate`."""
        now = utc_text(self.now())
        closed = None if status in ("open", "exchanging") else now
        claimed = now if status == "exchanging" else None
        cursor = self.conn.execute(
            "UPDATE pending SET status = ?, closed_at = ?, "
            "claimed_at = COALESCE(?, claimed_at), "
            "code_hash = COALESCE(?, code_hash) WHERE state_hash = ? AND status = ?",
            (status, closed, claimed, code_hash, state_hash, expected),
        )
        return cursor.rowcount == 1

    def company_of_state(self, state: str) -> str | None:
        """Return the company of the link with this state, without decrypting."""
        with self._lock:
            row = self.conn.execute(
                "SELECT company_id FROM pending WHERE state_hash = ?", (digest(state),)
            ).fetchone()
        return None if row is None else str(row["company_id"])

    def get_pending(self, state: str) -> PendingRecord | None:
        with self._lock:
            row = self.conn.execute(
                "SELECT * FROM pending WHERE state_hash = ?", (digest(state),)
            ).fetchone()
        return None if row is None else self._pending_record(row)

    def latest_origin_state(self, company_id: str) -> str | None:
        """Return the origin state of the company's newest link, or None if it has none.

        It reads one column only, so it neither decrypts the verifier nor
        parses timestamps.
        """
        with self._lock:
            row = self.conn.execute(
                "SELECT origin_state FROM pending WHERE company_id = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (company_id,),
            ).fetchone()
        return None if row is None else str(row["origin_state"])

    def expired_pending(self) -> list[PendingRecord]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT * FROM pending WHERE status = 'open' AND expires_at < ?",
                (utc_text(self.now()),),
            ).fetchall()
        return [self._pending_record(row) for row in rows]

    def _pending_record(self, row: sqlite3.Row) -> PendingRecord:
        return PendingRecord(
            state_hash=row["state_hash"],
            company_id=row["company_id"],
            redirect_uri=row["redirect_uri"],
            origin_state=row["origin_state"],
            status=row["status"],
            code_hash=row["code_hash"],
            created_at=parse_utc(row["created_at"]),
            expires_at=parse_utc(row["expires_at"]),
            verifier=self._decrypt(row["verifier"]),
            claimed_at=parse_utc(row["claimed_at"]) if row["claimed_at"] else None,
        )

    # -- encryption ---------------------------------------------------------

    def _encrypt(self, secret: Secret) -> str:
        return self._fernet.encrypt(secret.reveal().encode("utf-8")).decode("ascii")

    def _decrypt(self, token: str) -> Secret:
        try:
            return Secret(self._fernet.decrypt(token.encode("ascii")).decode("utf-8"))
        except InvalidToken:
            raise ConfigurationError(
                f"cannot decrypt a stored secret in {self.path}: the token key "
                "differs from the one that wrote it"
            ) from None


_COMPANY_SELECT: Final = (
    "SELECT c.id, c.name, c.admin_email, c.state, c.version, c.created_at, "
    "c.updated_at, g.access_expires_at, g.refresh_expires_at "
    "FROM companies c LEFT JOIN grants g ON g.company_id = c.id"
)


def _busy_error(exc: sqlite3.OperationalError, path: Path) -> Exception:
    if "locked" in str(exc) or "busy" in str(exc):
        return DatabaseBusy(
            f"database {path} stayed locked for {BUSY_TIMEOUT_MS} ms by another "
            "process; nothing was changed. Retry when the other writer finishes"
        )
    return exc
