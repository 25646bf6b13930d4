"""Refreshing tokens: one company under a lease, or a sweep over many.

UPS rotates refresh tokens, so each refresh takes a per-company lease in the
database, because two workers sending the same token would kill it. The new
pair is committed with retries, and a company is invalidated only when UPS
rejects exactly the token that is still stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from optin import errors
from optin.config import Settings
from optin.lifecycle import State, next_state
from optin.models import Company, SweepReport
from optin.secret import Secret
from optin.store import GrantRecord, Store, utc_text
from optin.sweep import SweepTracker
from optin.ups import TokenSet, UPSClient

logger = logging.getLogger(__name__)

# How long a worker may hold a company's refresh lease, beyond the HTTP timeout.
LEASE_MARGIN = timedelta(seconds=30)
# Maximum wait, in seconds, between retries of a rate-limited refresh.
MAX_BACKOFF = 60.0
# Commits of a refreshed pair attempted before giving up on a locked database.
STORE_ATTEMPTS = 3


def refresh_lease(timeout: float) -> timedelta:
    """Return how long a worker holds a company's refresh lease.

    httpx applies ``timeout`` to each phase of a request (connect, write,
    read, pool) separately, so one request may take up to four timeouts.
    """
    return timedelta(seconds=4 * timeout) + LEASE_MARGIN


def commit_retrying(
    store: Store, company_id: str, trigger: str, work: Callable[[], None]
) -> None:
    """Run ``work`` in one immediate transaction, retrying while the
    database is busy, for tokens that UPS will not issue again."""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            with store.immediate():
                work()
            return
        except errors.DatabaseBusy:
            if attempt == STORE_ATTEMPTS:
                logger.error(
                    "company %s: UPS issued tokens (%s) but the database stayed "
                    "locked %d times; the new tokens are lost",
                    company_id,
                    trigger,
                    attempt,
                )
                raise
            logger.warning(
                "company %s: database busy storing %s tokens, retrying",
                company_id,
                trigger,
            )


def grant_record(tokens: TokenSet) -> GrantRecord:
    return GrantRecord(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        token_type=tokens.token_type,
        scope=tokens.scope,
        issued_at=tokens.issued_at,
        access_expires_at=tokens.expires_at,
        refresh_expires_at=tokens.refresh_expires_at,
    )


def token_details(tokens: TokenSet) -> dict[str, Any]:
    return {
        "access_expires_at": utc_text(tokens.expires_at),
        "refresh_expires_at": utc_text(tokens.refresh_expires_at),
    }


class Refresher:
    """Refreshes and invalidations of one database's companies at one UPS app."""

    def __init__(self, store: Store, ups: UPSClient, settings: Settings) -> None:
        self.store = store
        self.ups = ups
        self.settings = settings

    def _company(self, company_id: str) -> Company:
        return Company.from_row(self.store.require_company(company_id))

    def refresh(
        self,
        company_id: str,
        actor: str,
        reason: str | None,
        may_invalidate: Callable[[], bool] | None,
    ) -> Company:
        company = self._company(company_id)
        next_state(company_id, "refresh", company.state)
        if self.store.count_grants(company_id) == 0:
            raise errors.StoreError(
                f"company_id={company_id!r} is authorized but has no stored tokens; "
                "record a password change or opt it out, then opt in again"
            )
        owner = uuid.uuid4().hex
        until = self.store.now() + refresh_lease(self.settings.timeout)
        if not self.store.claim_refresh(company_id, owner, until):
            if self.store.count_grants(company_id) == 0:
                raise errors.ConcurrentUpdate(company_id, "refresh")
            raise errors.RefreshInProgress(
                f"another worker is refreshing company_id={company_id!r}; "
                "retry after it finishes"
            )
        try:
            return self._refresh_under_lease(company_id, actor, reason, may_invalidate)
        finally:
            # A stored refresh or an invalidation already cleared the lease;
            # this covers every other way out.
            self._release_quietly(company_id, owner)

    def _refresh_under_lease(
        self,
        company_id: str,
        actor: str,
        reason: str | None,
        may_invalidate: Callable[[], bool] | None,
    ) -> Company:
        # Read again under the lease, because a worker that finished a refresh
        # between the first read and the claim has rotated the pair: the token
        # read before would be dead and the version stale.
        company = self._company(company_id)
        next_state(company_id, "refresh", company.state)
        grant = self.store.get_grant(company_id)
        if grant is None:
            raise errors.ConcurrentUpdate(company_id, "refresh")
        try:
            tokens = self.ups.refresh(grant.refresh_token)
        except errors.GrantRevoked as exc:
            if may_invalidate is not None and not may_invalidate():
                exc.company_invalidated = False
                raise
            rejected = f"UPS rejected the refresh token ({exc.code}: {exc.ups_message})"
            try:
                self.invalidate(
                    company,
                    actor,
                    f"{reason}: {rejected}" if reason else rejected,
                    {"ups_status": exc.status, "ups_code": exc.code},
                    sent_refresh_token=grant.refresh_token,
                )
            except errors.OptinError:
                logger.error(
                    "company %s: UPS rejected the refresh token, but marking the "
                    "company invalidated failed; record the password change again",
                    company_id,
                )
                raise
            raise
        self._store_refreshed(company, tokens, actor, reason)
        logger.info("company %s: refresh -> authorized", company_id)
        return self._company(company_id)

    def _store_refreshed(
        self, company: Company, tokens: TokenSet, actor: str, reason: str | None
    ) -> None:
        def commit() -> None:
            self.store.move(
                company.id,
                "refresh",
                company.state,
                company.version,
                State.AUTHORIZED,
                actor,
                reason,
                token_details(tokens),
            )
            self.store.put_grant(company.id, grant_record(tokens), refreshed=True)

        # UPS has already killed the previous refresh token, so losing this
        # pair would cost the company its grant.
        try:
            commit_retrying(self.store, company.id, "refresh", commit)
        except errors.ConcurrentUpdate:
            # Another process changed the company (an opt-out, say) meanwhile.
            # The discarded access token stays valid at UPS until it expires.
            logger.warning(
                "company %s: changed during its refresh; the new tokens were "
                "discarded, and the access token UPS just issued stays valid "
                "until %s",
                company.id,
                utc_text(tokens.expires_at),
            )
            raise

    def _release_quietly(self, company_id: str, owner: str) -> None:
        try:
            self.store.release_refresh(company_id, owner)
        except errors.OptinError as exc:
            # The lease expires on its own; the original outcome matters more.
            logger.warning(
                "company %s: refresh lease not released: %s", company_id, exc
            )

    def invalidate(
        self,
        company: Company,
        actor: str,
        reason: str,
        details: dict[str, Any],
        sent_refresh_token: Secret | None = None,
    ) -> None:
        with self.store.immediate():
            if sent_refresh_token is not None:
                # A worker whose lease ran out may have rotated the pair after
                # this one read it; then the rejection does not show a dead grant.
                current = self.store.get_grant(company.id)
                if current is None or current.refresh_token != sent_refresh_token:
                    raise errors.ConcurrentUpdate(company.id, "invalidate")
            self.store.move(
                company.id,
                "invalidate",
                company.state,
                company.version,
                State.INVALIDATED,
                actor,
                reason,
                details,
            )
            self.store.delete_grant(company.id)
        logger.info("company %s: invalidate -> invalidated", company.id)

    def sweep(
        self,
        company_ids: list[str],
        *,
        actor: str,
        reason: str | None = None,
        max_invalidations: int | None = None,
        max_transient_in_a_row: int = 5,
        workers: int = 1,
        rate_limit_retries: int = 3,
        backoff: float = 2.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> SweepReport:
        """Refresh the companies, as ``Manager.refresh_all`` describes."""
        limit = max_invalidations
        if limit is None:
            limit = max(10, len(company_ids) // 5)
        tracker = SweepTracker(
            len(company_ids), limit, max_transient_in_a_row, progress
        )

        def refresh_one(company_id: str) -> None:
            if tracker.stopped:
                tracker.skip(company_id)
                return
            for attempt in range(rate_limit_retries + 1):
                try:
                    self.refresh(
                        company_id, actor, reason, tracker.reserve_invalidation
                    )
                except errors.RateLimited as exc:
                    # UPS refused before using the token, so waiting and
                    # sending it again is safe.
                    if attempt == rate_limit_retries or tracker.stopped:
                        tracker.record(company_id, exc)
                        return
                    delay = min(backoff * 2**attempt, MAX_BACKOFF)
                    logger.warning(
                        "company %s: UPS rate limit, retrying in %.1f s",
                        company_id,
                        delay,
                    )
                    time.sleep(delay)
                except errors.OptinError as exc:
                    tracker.record(company_id, exc)
                    return
                else:
                    tracker.record(company_id, None)
                    return

        ids = company_ids
        if workers <= 1:
            for company_id in ids:
                refresh_one(company_id)
        else:
            # Submit in chunks: Executor.map queues every task at once, which
            # for hundreds of thousands of companies costs memory for nothing.
            chunk = workers * 64
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for start in range(0, len(ids), chunk):
                    list(pool.map(refresh_one, ids[start : start + chunk]))
        report = tracker.report
        if report.stopped_reason:
            logger.warning("refresh sweep stopped: %s", report.stopped_reason)
        return report
