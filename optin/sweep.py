"""Bookkeeping of a refresh sweep: the report and the rules that stop it early."""

from __future__ import annotations

import threading
from collections.abc import Callable

from optin import errors
from optin.models import SweepReport


class SweepTracker:
    """Collect refresh outcomes, possibly from several threads, and decide when
    the sweep must stop.

    It stops when UPS rejects the client itself (no company is at fault), after
    ``max_transient_in_a_row`` transient errors in a row (an outage), or once
    ``max_invalidations`` grants died, because a sudden wave of dead grants
    more often means trouble at UPS than that many password changes.
    """

    def __init__(
        self,
        total: int,
        max_invalidations: int,
        max_transient_in_a_row: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.report = SweepReport()
        self._total = total
        self._max_invalidations = max_invalidations
        self._max_transient = max_transient_in_a_row
        self._progress = progress
        self._transient_run = 0
        self._done = 0
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.report.stopped_reason is not None

    def record(self, company_id: str, error: errors.OptinError | None) -> None:
        """Record one company's outcome: None for refreshed, else the error."""
        with self._lock:
            self._done += 1
            self._classify(company_id, error)
            if self._progress is not None:
                self._progress(self._done, self._total)

    def reserve_invalidation(self) -> bool:
        """Claim one of the sweep's invalidations; False once all are taken.

        Parallel workers call this before invalidating, so in-flight
        refreshes cannot push the sweep past ``max_invalidations``.
        """
        with self._lock:
            if self._reserved >= self._max_invalidations:
                return False
            self._reserved += 1
            # The company asking has not been recorded yet.
            remaining = self._total - self._done - 1
            if self._reserved >= self._max_invalidations and remaining > 0:
                self._stop(
                    f"{self._reserved} grants died in this sweep; stopped to avoid "
                    "mass invalidation. Check UPS status and the client "
                    "credentials, then rerun with a higher max_invalidations "
                    "(CLI: --max-invalidations) if this is expected"
                )
            return True

    def skip(self, company_id: str) -> None:
        with self._lock:
            self.report.skipped.append(company_id)

    def _classify(self, company_id: str, error: errors.OptinError | None) -> None:
        report = self.report
        if error is None:
            report.refreshed.append(company_id)
            self._transient_run = 0
        elif isinstance(error, errors.GrantRevoked):
            self._transient_run = 0
            if error.company_invalidated:
                report.invalidated.append(company_id)
            else:
                report.failed[company_id] = (
                    f"{error}; left authorized because the sweep reached "
                    "max_invalidations"
                )
        elif isinstance(error, errors.ClientRejected | errors.Blocked):
            report.failed[company_id] = str(error)
            self._stop(f"UPS rejected the client: {error}", error)
        elif isinstance(error, errors.InvalidRequest):
            # The same malformed request would fail for every company.
            report.failed[company_id] = str(error)
            self._stop(f"UPS rejected the refresh request itself: {error}", error)
        elif isinstance(error, errors.RefreshInProgress):
            # Another worker or sweep is refreshing this company right now.
            report.skipped.append(company_id)
        elif isinstance(error, errors.TransientError):
            report.failed[company_id] = str(error)
            self._transient_run += 1
            if self._transient_run >= self._max_transient:
                self._stop(
                    f"{self._transient_run} transient errors in a row; UPS seems "
                    "unavailable. The tokens are kept; rerun later"
                )
        else:
            report.failed[company_id] = str(error)
            self._transient_run = 0

    def _stop(self, reason: str, error: errors.OptinError | None = None) -> None:
        # The first reason wins; later outcomes of in-flight refreshes still count.
        if self.report.stopped_reason is None:
            self.report.stopped_reason = reason
            self.report.stop_error = error
