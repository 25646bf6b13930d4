"""The Python API: one facade that notebooks, the CLI, batch scripts and the
callback receiver all call.

Each state-changing method checks with the lifecycle whether the trigger is allowed,
talks to UPS when the step needs it, then commits through the store. The
commit decides: when it fails, nothing changed, and the caller gets the
toolkit's error naming the company and what to do next.
"""

from __future__ import annotations

import csv
import logging
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from optin import errors
from optin.callback import CallbackParams, parse_callback
from optin.config import Settings
from optin.keys import load_fernet
from optin.lifecycle import State, allowed_triggers, next_state
from optin.models import (
    AuthorizationLink,
    CallbackResult,
    Company,
    HistoryEntry,
    SweepReport,
)
from optin.refresher import (
    LEASE_MARGIN,
    Refresher,
    commit_retrying,
    grant_record,
    token_details,
)
from optin.store import PendingRecord, Store, digest, utc_text
from optin.ups import UPSClient, make_pkce_pair

logger = logging.getLogger(__name__)

# Header of the CSV file that export_links writes.
LINK_COLUMNS = ("company_id", "name", "admin_email", "link", "link_expires_at")


class Manager:
    """The opt-in lifecycle of many companies, kept in one SQLite file.

    >>> manager = Manager.open()                      # doctest: +SKIP
    >>> link = manager.begin_opt_in("ACME-01", actor="ana")  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        ups: UPSClient | None = None,
        clock: Callable[[], datetime] | None = None,
        create: bool = True,
    ) -> None:
        """Open the settings' database; ``create=False`` requires it to exist."""
        self.settings = settings or Settings.load()
        path = self.settings.db_path
        exists = path.exists() and path.stat().st_size > 0
        if not exists and not create:
            raise errors.StoreError(
                f"database not found: {path}; check --db or OPTIN_DB, or create "
                "it with `optin import` or `optin add`"
            )
        # A key is only ever made together with a new database: for an existing
        # one, a missing key file means its tokens cannot be read.
        fernet = load_fernet(self.settings.resolved_key_file, create=not exists)
        self.store = Store(path, fernet, clock=clock)
        try:
            self._check_binding()
        except BaseException:
            self.store.close()
            raise
        self.ups = ups or UPSClient(self.settings)
        self._refresher = Refresher(self.store, self.ups, self.settings)

    def _check_binding(self) -> None:
        """Tie the database to one UPS environment and client id.

        Tokens of one UPS app do not work for another, so refreshing them
        with other settings would invalidate every company.
        """
        expected = {
            "ups_environment": self.settings.environment,
            "ups_client_id": self.settings.client_id,
        }
        stored = {name: self.store.get_meta(name) for name in expected}
        if all(value is None for value in stored.values()):
            for name, value in expected.items():
                self.store.set_meta(name, value)
            return
        if stored != expected:
            raise errors.ConfigurationError(
                f"database {self.store.path} belongs to environment="
                f"{stored['ups_environment']!r} and client_id="
                f"{stored['ups_client_id']!r}, but the settings name environment="
                f"{expected['ups_environment']!r} and client_id="
                f"{expected['ups_client_id']!r}; use matching settings, or another "
                "database (OPTIN_DB) for this UPS app"
            )

    @classmethod
    def open(
        cls, db_path: Path | str | None = None, create: bool = True, **settings: Any
    ) -> Manager:
        """Open a database with settings from the environment and config file."""
        return cls(Settings.load(db_path=db_path, **settings), create=create)

    def close(self) -> None:
        self.store.close()
        self.ups.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Manager(db={str(self.store.path)!r}, "
            f"environment={self.settings.environment!r})"
        )

    # -- reads ----------------------------------------------------------------

    def get_company(self, company_id: str) -> Company:
        return Company.from_row(self.store.require_company(company_id))

    def list_companies(
        self, state: State | str | None = None, search: str | None = None
    ) -> list[Company]:
        if state is not None:
            state = _parse_state(state)
        return [Company.from_row(r) for r in self.store.list_companies(state, search)]

    def count_by_state(self) -> dict[str, int]:
        counts = self.store.count_by_state()
        return {state.value: counts.get(state.value, 0) for state in State}

    def get_history(
        self, company_id: str | None = None, newest_first: bool = False
    ) -> list[HistoryEntry]:
        if company_id is not None:
            self.store.require_company(company_id)
        entries = [HistoryEntry(**row) for row in self.store.history(company_id)]
        return entries[::-1] if newest_first else entries

    def allowed_triggers(self, company_id: str) -> tuple[str, ...]:
        return allowed_triggers(self.get_company(company_id).state)

    # -- companies ------------------------------------------------------------

    def add_company(
        self,
        company_id: str,
        name: str,
        admin_email: str | None = None,
        *,
        actor: str,
        reason: str | None = None,
    ) -> Company:
        _check_company_id(company_id)
        if not isinstance(name, str) or not name.strip() or _has_control(name):
            raise errors.UsageError(
                f"company_id={company_id!r} needs a non-empty name of printable "
                "characters"
            )
        row = {"id": company_id, "name": name, "admin_email": admin_email or ""}
        self.store.add_companies([row], actor, reason)
        logger.info("added company %s", company_id)
        return self.get_company(company_id)

    def import_companies(
        self,
        rows_or_path: Iterable[dict[str, str]] | Path | str,
        *,
        actor: str,
        reason: str | None = None,
    ) -> int:
        """Add companies from a CSV file (columns id, name, admin_email) or dicts.

        Existing ids are skipped, so an import can be re-run safely.
        """
        rows = _read_rows(rows_or_path)
        fresh = [row for row in rows if self.store.get_company(row["id"]) is None]
        added = self.store.add_companies(fresh, actor, reason) if fresh else 0
        logger.info(
            "imported %d companies (%d already present)", added, len(rows) - added
        )
        return added

    # -- opt-in ---------------------------------------------------------------

    def begin_opt_in(
        self, company_id: str, *, actor: str, reason: str | None = None
    ) -> AuthorizationLink:
        """Start (or restart) an opt-in; return the UPS.com link for the admin.

        A link issued earlier for the same company stops working.
        """
        company = self.get_company(company_id)
        target = next_state(company_id, "request_authorization", company.state)
        origin = self._origin_of(company)
        state = secrets.token_urlsafe(32)
        verifier, challenge = make_pkce_pair()
        expires_at = self.store.now() + timedelta(seconds=self.settings.link_lifetime)

        with self.store.immediate():
            superseded = self.store.close_open_pending(company_id, "superseded")
            self.store.move(
                company_id,
                "request_authorization",
                company.state,
                company.version,
                target,
                actor,
                reason,
                {
                    "link_expires_at": utc_text(expires_at),
                    "superseded_links": superseded,
                },
            )
            self.store.insert_pending(
                state,
                company_id,
                verifier,
                self.settings.redirect_uri,
                origin,
                expires_at,
            )
        logger.info("company %s: request_authorization -> pending", company_id)
        url = self.ups.authorization_url(state, challenge)
        return AuthorizationLink(company_id, url, expires_at)

    def begin_opt_in_all(
        self,
        state: State | str = State.INVALIDATED,
        *,
        actor: str,
        reason: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[list[AuthorizationLink], dict[str, str]]:
        """Begin an opt-in for every company in ``state``.

        Returns the links and, per company that failed, the error message.
        """
        companies = self.list_companies(state)
        links: list[AuthorizationLink] = []
        failed: dict[str, str] = {}
        for done, company in enumerate(companies, start=1):
            try:
                links.append(self.begin_opt_in(company.id, actor=actor, reason=reason))
            except errors.OptinError as exc:
                logger.warning("company %s: re-opt-in not started: %s", company.id, exc)
                failed[company.id] = str(exc)
            if progress is not None:
                progress(done, len(companies))
        return links, failed

    def export_links(self, links: Iterable[AuthorizationLink], path: Path | str) -> int:
        """Write links to a CSV file for the admins; return the number of rows.

        Columns: company_id, name, admin_email, link, link_expires_at (ISO
        8601, UTC). The file is made owner-only before any link is written,
        because anyone who signs in through a link connects their UPS.com
        account to that company.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(mode=0o600)
        target.chmod(0o600)
        count = 0
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(LINK_COLUMNS)
            for link in links:
                company = self.get_company(link.company_id)
                writer.writerow(
                    [
                        company.id,
                        company.name,
                        company.admin_email or "",
                        link.url,
                        link.expires_at.isoformat(),
                    ]
                )
                count += 1
        return count

    def cancel_opt_in(
        self, company_id: str, *, actor: str, reason: str | None = None
    ) -> Company:
        """Cancel a pending opt-in; the company returns to the state it came from."""
        company = self.get_company(company_id)
        origin = self._origin_of(company)
        target = next_state(company_id, "cancel", company.state, origin)
        with self.store.immediate():
            self.store.close_open_pending(company_id, "cancelled")
            self.store.move(
                company_id,
                "cancel",
                company.state,
                company.version,
                target,
                actor,
                reason,
            )
        logger.info("company %s: cancel -> %s", company_id, target)
        return self.get_company(company_id)

    def company_for_callback(self, callback_url: str) -> str | None:
        """Return the id of the company whose link a callback URL belongs to.

        None when no link has the URL's state. Raises MalformedCallback for a
        URL without a state. Nothing changes and UPS is not called.
        """
        state = parse_callback(callback_url).state
        return self.store.company_of_state(state)

    def complete_opt_in(
        self, callback_url: str, *, actor: str, reason: str | None = None
    ) -> CallbackResult:
        """Complete an opt-in from the URL UPS redirected the admin's browser to.

        The ``state`` is checked first. ``error=access_denied`` cancels. A code
        is exchanged at most once: replaying the same callback returns the
        earlier result without a second exchange.
        """
        params = parse_callback(callback_url)
        pending = self.store.get_pending(params.state)
        if pending is None:
            raise errors.UnknownState(
                "no authorization link has this callback's state: it is forged, "
                "mistyped or from another database. Paste the whole address again; "
                "if it still fails, begin a new opt-in"
            )
        early = self._check_link(pending, params, actor)
        if early is not None:
            return early
        if params.error is not None:
            return self._deny(pending, params, actor, reason)
        return self._exchange(pending, params, actor, reason)

    def _check_link(
        self, pending: PendingRecord, params: CallbackParams, actor: str
    ) -> CallbackResult | None:
        company_id = pending.company_id
        if pending.status == "completed":
            if (
                params.code is not None
                and digest(params.code.reveal()) == pending.code_hash
            ):
                company = self.get_company(company_id)
                return CallbackResult(
                    company_id,
                    "replayed",
                    company,
                    f"company {company_id} was already authorized by this callback; "
                    "no second code exchange was made",
                )
            raise errors.ReplayedCallback(
                f"the authorization link of company_id={company_id!r} was already "
                "used; begin a new opt-in if it is needed again"
            )
        if pending.status == "superseded":
            raise errors.SupersededState(
                f"this link of company_id={company_id!r} was replaced by a newer "
                "one; use the newest link or begin a new opt-in"
            )
        if pending.status == "exchanging":
            self._check_interrupted(pending)
            raise errors.TransientError(
                f"the callback of company_id={company_id!r} is being completed by "
                "another request; check the company's state in a moment"
            )
        if pending.status != "open":
            raise errors.CallbackError(
                f"the authorization link of company_id={company_id!r} is closed "
                f"(status {pending.status}); begin a new opt-in"
            )
        if pending.expires_at < self.store.now():
            self._close_link(
                pending, "expired", "cancel", actor, "the authorization link expired"
            )
            raise errors.ExpiredState(
                f"the authorization link of company_id={company_id!r} expired at "
                f"{utc_text(pending.expires_at)}; begin a new opt-in"
            )
        return None

    def _check_interrupted(self, pending: PendingRecord) -> None:
        """Close a link whose code exchange outlived any live request.

        A process killed during the exchange leaves the link ``exchanging``.
        UPS may have used the code, so it is never resent; the link fails.
        """
        allowed = timedelta(seconds=self.settings.timeout) + LEASE_MARGIN
        if (
            pending.claimed_at is None
            or pending.claimed_at + allowed > self.store.now()
        ):
            return
        with self.store.immediate():
            self.store.set_pending_status(pending.state_hash, "failed", "exchanging")
        logger.warning(
            "company %s: closed a link whose code exchange was interrupted",
            pending.company_id,
        )
        raise errors.CallbackError(
            f"the code exchange for company_id={pending.company_id!r} was "
            "interrupted and UPS may have used the code; begin a new opt-in"
        )

    def _deny(
        self,
        pending: PendingRecord,
        params: CallbackParams,
        actor: str,
        reason: str | None,
    ) -> CallbackResult:
        denied = f"UPS returned error={params.error}"
        if params.error == "access_denied":
            denied = (
                "the admin cancelled or denied consent at UPS (error=access_denied)"
            )
        self._close_link(
            pending,
            "cancelled",
            "cancel",
            actor,
            f"{reason}: {denied}" if reason else denied,
        )
        company = self.get_company(pending.company_id)
        return CallbackResult(
            pending.company_id,
            "cancelled",
            company,
            f"company {pending.company_id} was not authorized: {denied}; it is "
            f"{company.state} again",
        )

    def _exchange(
        self,
        pending: PendingRecord,
        params: CallbackParams,
        actor: str,
        reason: str | None,
    ) -> CallbackResult:
        company_id = pending.company_id
        company = self.get_company(company_id)
        next_state(company_id, "authorize", company.state)
        assert params.code is not None
        code_hash = digest(params.code.reveal())
        with self.store.immediate():
            claimed = self.store.set_pending_status(
                pending.state_hash, "exchanging", "open", code_hash
            )
        if not claimed:
            # Another request claimed the link between our read and our claim.
            return self.complete_opt_in(params.url, actor=actor, reason=reason)

        try:
            tokens = self.ups.exchange_code(
                params.code, pending.redirect_uri, pending.verifier
            )
        except (errors.RateLimited, errors.ClientRejected, errors.Blocked):
            # UPS refused before using the code, so the same callback may be retried.
            with self.store.immediate():
                self.store.set_pending_status(pending.state_hash, "open", "exchanging")
            raise
        except errors.CodeRejected as exc:
            self._close_link(
                pending,
                "failed",
                "cancel",
                actor,
                f"UPS rejected the authorization code ({exc.code}: {exc.ups_message})",
                expected_status="exchanging",
            )
            raise
        except Exception:
            # Outcome unknown (timeout, 5xx, an unreadable response): UPS may have
            # used the code, so the link is closed and the company stays pending
            # until a new link.
            with self.store.immediate():
                self.store.set_pending_status(
                    pending.state_hash, "failed", "exchanging"
                )
            raise

        def commit() -> None:
            if not self.store.set_pending_status(
                pending.state_hash, "completed", "exchanging"
            ):
                raise errors.SupersededState(
                    f"the link of company_id={company_id!r} was replaced or closed "
                    "while its code was exchanged; the new tokens were discarded. "
                    "Use the newest link"
                )
            self.store.move(
                company_id,
                "authorize",
                company.state,
                company.version,
                State.AUTHORIZED,
                actor,
                reason,
                token_details(tokens),
            )
            self.store.put_grant(company_id, grant_record(tokens), refreshed=False)

        # UPS has used the code, so these tokens cannot be had again.
        commit_retrying(self.store, company_id, "authorize", commit)
        logger.info("company %s: authorize -> authorized", company_id)
        return CallbackResult(
            company_id,
            "authorized",
            self.get_company(company_id),
            f"company {company_id} is authorized",
        )

    def _close_link(
        self,
        pending: PendingRecord,
        status: str,
        trigger: str,
        actor: str,
        reason: str,
        expected_status: str = "open",
    ) -> None:
        """Close one link and move its company back, in one transaction.

        The link's status is compare-and-set first: when a newer link
        superseded it meanwhile, nothing changes and SupersededState is
        raised, so an old link can never cancel a newer opt-in.
        """
        with self.store.immediate():
            closed = self.store.set_pending_status(
                pending.state_hash, status, expected_status
            )
            if not closed:
                raise errors.SupersededState(
                    f"the link of company_id={pending.company_id!r} was replaced or "
                    "closed meanwhile; nothing changed. Use the newest link"
                )
            # Read inside the transaction: no other writer can run until commit.
            company = self.get_company(pending.company_id)
            target = next_state(
                company.id, trigger, company.state, pending.origin_state
            )
            self.store.move(
                company.id,
                trigger,
                company.state,
                company.version,
                target,
                actor,
                reason,
            )
        logger.info("company %s: %s -> %s (%s)", company.id, trigger, target, status)

    def expire_links(self, *, actor: str = "system") -> list[str]:
        """Cancel every pending opt-in whose link expired; return the company ids."""
        expired: list[str] = []
        for pending in self.store.expired_pending():
            try:
                self._close_link(
                    pending,
                    "expired",
                    "cancel",
                    actor,
                    "the authorization link expired",
                )
            except errors.OptinError as exc:
                logger.warning(
                    "company %s: link not expired: %s", pending.company_id, exc
                )
                continue
            expired.append(pending.company_id)
        return expired

    def _origin_of(self, company: Company) -> str:
        if company.state != State.PENDING:
            return company.state.value
        origin = self.store.latest_origin_state(company.id)
        # A pending company always has a link row; unauthorized is the safe origin.
        return origin if origin is not None else State.UNAUTHORIZED.value

    # -- authorized companies ---------------------------------------------------

    def refresh(
        self, company_id: str, *, actor: str, reason: str | None = None
    ) -> Company:
        """Refresh the company's tokens at UPS and store the rotated pair.

        A dead grant moves the company to ``invalidated`` (and raises
        GrantRevoked); transient trouble keeps the tokens and raises.
        """
        self._refresher.refresh(company_id, actor, reason, may_invalidate=None)
        return self.get_company(company_id)

    def refresh_all(
        self,
        *,
        actor: str,
        reason: str | None = None,
        due_within: timedelta | None = None,
        max_invalidations: int | None = None,
        max_transient_in_a_row: int = 5,
        workers: int = 1,
        rate_limit_retries: int = 3,
        backoff: float = 2.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> SweepReport:
        """Refresh every authorized company (or those expiring within ``due_within``).

        ``workers`` threads send refreshes in parallel over this Manager's
        HTTP client; the database writes stay serialized. A 429 is retried
        up to ``rate_limit_retries`` times after ``backoff`` seconds, doubling
        each time. The sweep stops early, leaving the rest untouched (listed
        as skipped), when UPS rejects the client or the request, after
        ``max_transient_in_a_row`` transient errors in a row, or once
        ``max_invalidations`` grants died (default: 10, or a fifth of the
        companies swept when that is more). See SweepTracker.
        """
        return self._refresher.sweep(
            [company.id for company in self._due(due_within)],
            actor=actor,
            reason=reason,
            max_invalidations=max_invalidations,
            max_transient_in_a_row=max_transient_in_a_row,
            workers=workers,
            rate_limit_retries=rate_limit_retries,
            backoff=backoff,
            progress=progress,
        )

    def _due(self, due_within: timedelta | None) -> list[Company]:
        companies = self.list_companies(State.AUTHORIZED)
        if due_within is None:
            return companies
        cutoff = utc_text(self.store.now() + due_within)
        return [c for c in companies if (c.access_expires_at or "") <= cutoff]

    def record_password_change(
        self, company_id: str, *, actor: str, reason: str | None = None
    ) -> Company:
        """Invalidate the company because its UPS.com user changed their password."""
        company = self.get_company(company_id)
        next_state(company_id, "invalidate", company.state)
        self._refresher.invalidate(
            company,
            actor,
            reason or "the UPS.com user changed their password",
            {"source": "recorded"},
        )
        return self.get_company(company_id)

    def opt_out(
        self,
        company_id: str,
        *,
        actor: str,
        reason: str | None = None,
        confirm: bool = False,
    ) -> Company:
        """Opt the company out: delete every token we hold for it.

        UPS has no revoke endpoint, so the last access token stays valid at UPS
        until its expiry instant, which the history row records.
        """
        company = self.get_company(company_id)
        next_state(company_id, "opt_out", company.state)
        if not confirm:
            raise errors.ConfirmationRequired(company_id)
        details = {"access_token_valid_at_ups_until": company.access_expires_at}
        with self.store.immediate():
            self.store.close_open_pending(company_id, "cancelled")
            self.store.move(
                company_id,
                "opt_out",
                company.state,
                company.version,
                State.OPTED_OUT,
                actor,
                reason,
                details,
            )
            self.store.delete_grant(company_id)
        logger.info("company %s: opt_out -> opted_out", company_id)
        return self.get_company(company_id)


def _parse_state(state: State | str) -> str:
    try:
        return State(state).value
    except ValueError:
        choices = ", ".join(member.value for member in State)
        raise errors.UsageError(
            f"invalid state={state!r}; use one of {choices}"
        ) from None


def _check_company_id(company_id: str) -> None:
    if (
        not company_id
        or company_id != company_id.strip()
        or len(company_id) > 200
        or _has_control(company_id)
    ):
        raise errors.UsageError(
            f"invalid company_id={company_id!r}: use 1 to 200 printable characters "
            "without leading or trailing spaces"
        )


def _has_control(text: str) -> bool:
    # Newlines or escape sequences would forge rows in tables and terminals.
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


def _read_rows(source: Iterable[dict[str, str]] | Path | str) -> list[dict[str, str]]:
    rows = _read_csv(Path(source)) if isinstance(source, str | Path) else list(source)
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if not row.get("id") or not row.get("name"):
            raise errors.UsageError(
                f"company row {number} lacks id or name: {row!r}; each row needs "
                "the columns id, name and admin_email"
            )
        _check_company_id(row["id"])
        if not row["name"].strip() or _has_control(row["name"]):
            raise errors.UsageError(
                f"company row {number} has an invalid name {row['name']!r}; use "
                "printable characters"
            )
        if row["id"] in seen:
            raise errors.UsageError(
                f"company row {number} repeats id {row['id']!r} of row "
                f"{seen[row['id']]}; each id may appear once"
            )
        seen[row["id"]] = number
    return rows


def _read_csv(path: Path) -> list[dict[str, str]]:
    # utf-8-sig also reads the byte-order mark that spreadsheets write.
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise errors.UsageError(
            f"cannot read {path}: it is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); save it as CSV UTF-8"
        ) from None
    except OSError as exc:
        raise errors.UsageError(f"cannot read {path}: {exc.strerror}") from None
