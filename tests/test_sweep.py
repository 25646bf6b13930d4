"""Refresh sweeps: parallel workers and the rules that stop a sweep early."""

from __future__ import annotations

import httpx
import pytest

from optin import Manager, State, errors
from optin.sweep import SweepTracker
from tests.helpers import authorize, create_user


def seed(manager: Manager, sandbox_http: httpx.Client, count: int) -> dict[str, str]:
    logins = {}
    for number in range(count):
        company_id = f"C-{number:02d}"
        manager.add_company(company_id, company_id, actor="ana")
        logins[company_id] = create_user(sandbox_http)
        authorize(manager, sandbox_http, company_id, logins[company_id])
    return logins


def change_password(sandbox_http: httpx.Client, login: str) -> None:
    sandbox_http.post(
        f"/_sandbox/users/{login}/password", json={"password": "new-Pw-9"}
    ).raise_for_status()


@pytest.mark.parametrize("workers", [1, 4])
def test_sweep_workers_same_result(
    manager: Manager, sandbox_http: httpx.Client, workers: int
) -> None:
    logins = seed(manager, sandbox_http, 8)
    for company_id in ("C-02", "C-05"):
        change_password(sandbox_http, logins[company_id])
    seen: list[int] = []
    report = manager.refresh_all(
        actor="job", workers=workers, progress=lambda done, total: seen.append(done)
    )
    assert sorted(report.invalidated) == ["C-02", "C-05"]
    assert len(report.refreshed) == 6
    assert report.stopped_reason is None
    assert sorted(seen) == list(range(1, 9))
    assert manager.count_by_state()[State.INVALIDATED.value] == 2


def test_sweep_stops_at_invalidation_limit(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    logins = seed(manager, sandbox_http, 5)
    for login in logins.values():
        change_password(sandbox_http, login)
    report = manager.refresh_all(actor="job", max_invalidations=2)
    assert report.invalidated == ["C-00", "C-01"]
    assert report.skipped == ["C-02", "C-03", "C-04"]
    assert report.stopped_reason is not None
    assert "max_invalidations" in report.stopped_reason
    assert manager.count_by_state()[State.AUTHORIZED.value] == 3


def test_sweep_stops_after_transient_run(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    seed(manager, sandbox_http, 4)
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "status": 503, "count": 10}
    ).raise_for_status()
    report = manager.refresh_all(actor="job", max_transient_in_a_row=2)
    assert sorted(report.failed) == ["C-00", "C-01"]
    assert report.skipped == ["C-02", "C-03"]
    assert report.stopped_reason is not None
    assert "transient errors in a row" in report.stopped_reason
    assert manager.count_by_state()[State.AUTHORIZED.value] == 4


def test_tracker_client_rejection_last() -> None:
    tracker = SweepTracker(1, 10, 5)
    rejected = errors.ClientRejected(401, "10401", "ClientId is Invalid", "fix it")
    tracker.record("C-00", rejected)
    assert tracker.stopped
    assert tracker.report.failed == {"C-00": str(rejected)}


def test_parallel_sweep_respects_limit(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    logins = seed(manager, sandbox_http, 12)
    for login in logins.values():
        change_password(sandbox_http, login)
    report = manager.refresh_all(actor="job", workers=4, max_invalidations=3)
    assert len(report.invalidated) == 3
    assert manager.count_by_state()[State.INVALIDATED.value] == 3
    assert report.stopped_reason is not None
    kept = [cid for cid, text in report.failed.items() if "left authorized" in text]
    assert len(kept) + len(report.skipped) + 3 == 12


def test_rotated_elsewhere_not_invalidated(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    """A worker whose lease ran out sends a token that another worker has
    since rotated; UPS's rejection must not invalidate the healthy grant."""
    seed(manager, sandbox_http, 1)
    stale = manager.store.get_grant("C-00")
    assert stale is not None
    manager.refresh("C-00", actor="other-worker")
    real_get_grant = manager.store.get_grant
    calls = {"n": 0}

    def stale_first(company_id: str) -> object:
        calls["n"] += 1
        # The first read under the lease returns the pair from before the rotation.
        return stale if calls["n"] == 1 else real_get_grant(company_id)

    manager.store.get_grant = stale_first  # type: ignore[method-assign,assignment]
    with pytest.raises(errors.ConcurrentUpdate):
        manager.refresh("C-00", actor="late-worker")
    manager.store.get_grant = real_get_grant  # type: ignore[method-assign]
    assert manager.get_company("C-00").state is State.AUTHORIZED
    assert manager.refresh("C-00", actor="job").state is State.AUTHORIZED


def test_sweep_backs_off_on_rate_limit(
    manager: Manager, sandbox_http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    seed(manager, sandbox_http, 3)
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "status": 429, "count": 2}
    ).raise_for_status()
    report = manager.refresh_all(actor="job", backoff=0.01)
    assert sorted(report.refreshed) == ["C-00", "C-01", "C-02"]
    assert report.failed == {}
    assert caplog.text.count("UPS rate limit, retrying") == 2


def test_sweep_rate_limit_gives_up(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    seed(manager, sandbox_http, 1)
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "status": 429, "count": 5}
    ).raise_for_status()
    report = manager.refresh_all(actor="job", backoff=0.01, rate_limit_retries=2)
    assert list(report.failed) == ["C-00"]
    assert "Rate Limit Exceeded" in report.failed["C-00"]
    assert manager.store.count_grants("C-00") == 1
