"""Several processes, connections and workers acting on one database at once.

Each worker process is started with the spawn method and opens its own
Manager on the shared SQLite file, as separate CLI or notebook processes do.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from typing import Any

import httpx
import pytest

import optin.store
from optin import Manager, Settings
from optin.errors import DatabaseBusy, GrantRevoked, OptinError, RefreshInProgress
from optin.lifecycle import State, next_state
from optin.signin import sign_in

ACTOR = "concurrency-test"
COMPANY = "ACME-01"
LOGIN = "admin-acme"
PASSWORD = "acme-password-1"
REFRESH_PATH = "/security/v1/oauth/refresh"
SPAWN = multiprocessing.get_context("spawn")
# Seconds to wait for a worker process, which imports optin afresh when spawned.
WORKER_TIMEOUT = 60
# Seconds the sandbox delays the refresh of the worker that the test kills. The
# kill comes within milliseconds of the delay's start.
KILLED_REFRESH_DELAY = 3.0


# -- worker processes ------------------------------------------------------------


def settings_values(settings: Settings) -> dict[str, Any]:
    """Return what a worker process needs to build the same Settings."""
    return {
        "base_url": settings.base_url,
        "db_path": str(settings.db_path),
        "timeout": settings.timeout,
    }


def run_action(manager: Manager, action: str) -> None:
    if action == "opt_out":
        manager.opt_out(COMPANY, actor=ACTOR, confirm=True)
    elif action == "begin":
        manager.begin_opt_in(COMPANY, actor=ACTOR)
    elif action == "refresh":
        manager.refresh(COMPANY, actor=ACTOR)
    else:
        raise ValueError(f"unknown action {action!r}")


def worker(
    values: dict[str, Any],
    action: str,
    barrier: Barrier | None,
    same_version: bool,
    results: Any,
) -> None:
    """Run one action in a fresh process and put (error name or "ok", message).

    With ``same_version``, the worker waits at the barrier just before its
    first transaction, after reading the company, so that both workers act on
    the same version. Otherwise it waits before it starts the action.
    """
    with Manager(Settings.build(values)) as manager:
        if barrier is not None and same_version:
            manager.store.immediate = wait_once(  # type: ignore[method-assign]
                barrier, manager.store.immediate
            )
        elif barrier is not None:
            barrier.wait(WORKER_TIMEOUT)
        try:
            run_action(manager, action)
        except OptinError as error:
            results.put((type(error).__name__, str(error)))
        else:
            results.put(("ok", ""))


def wait_once(
    barrier: Barrier, immediate: Callable[[], AbstractContextManager[Any]]
) -> Callable[[], AbstractContextManager[Any]]:
    """Wrap Store.immediate so that its first call waits at ``barrier``."""
    waited = False

    def wrapper() -> AbstractContextManager[Any]:
        nonlocal waited
        if not waited:
            waited = True
            barrier.wait(WORKER_TIMEOUT)
        return immediate()

    return wrapper


def run_workers(
    settings: Settings, actions: list[str], same_version: bool = False
) -> list[str]:
    """Run one process per action at once; return their outcomes, sorted."""
    barrier = SPAWN.Barrier(len(actions))
    results = SPAWN.Queue()
    processes = [
        SPAWN.Process(
            target=worker,
            args=(settings_values(settings), action, barrier, same_version, results),
        )
        for action in actions
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=WORKER_TIMEOUT) for _ in processes]
    for process in processes:
        process.join(WORKER_TIMEOUT)
        assert process.exitcode == 0
    return sorted(name for name, _ in outcomes)


# -- helpers ---------------------------------------------------------------------


@pytest.fixture
def authorized(manager: Manager, sandbox_http: httpx.Client) -> Manager:
    """Return the manager after taking COMPANY through a full opt-in."""
    sandbox_http.post(
        "/_sandbox/users",
        json={"username": LOGIN, "email": "admin@acme.test", "password": PASSWORD},
    ).raise_for_status()
    manager.add_company(COMPANY, "Acme Ltd", actor=ACTOR)
    link = manager.begin_opt_in(COMPANY, actor=ACTOR).url
    url = sign_in(sandbox_http, link, LOGIN, PASSWORD)
    assert manager.complete_opt_in(url, actor=ACTOR).outcome == "authorized"
    return manager


def snapshot(manager: Manager, company_id: str = COMPANY) -> tuple[object, ...]:
    company = manager.get_company(company_id)
    return (
        company.state,
        company.version,
        len(manager.get_history(company_id)),
        manager.store.get_grant(company_id),
    )


def check_history(manager: Manager, company_id: str = COMPANY) -> None:
    """Assert that the history replays to the stored state and version."""
    rows = manager.get_history(company_id)
    state = rows[0].to_state
    assert rows[0].from_state is None
    for row in rows[1:]:
        assert row.from_state == state, f"history row {row.id} breaks the chain"
        moved = next_state(company_id, row.trigger, row.from_state, row.to_state)
        assert moved.value == row.to_state
        state = row.to_state
    company = manager.get_company(company_id)
    assert company.state.value == state
    assert company.version == len(rows) - 1


def triggers(manager: Manager, company_id: str = COMPANY) -> list[str]:
    return [row.trigger for row in manager.get_history(company_id)]


def refresh_requests(http: httpx.Client) -> list[dict[str, Any]]:
    records = http.get("/_sandbox/requests").json()
    return [record for record in records if record["path"] == REFRESH_PATH]


def add_refresh_delay(http: httpx.Client, seconds: float) -> None:
    http.post(
        "/_sandbox/faults",
        json={"endpoint": "refresh", "delay": seconds, "count": 1},
    ).raise_for_status()


def lease_owner(settings: Settings) -> str | None:
    with sqlite3.connect(settings.db_path) as conn:
        row = conn.execute(
            "SELECT lease_owner FROM grants WHERE company_id = ?", (COMPANY,)
        ).fetchone()
    return None if row is None else row[0]


def lease_end(settings: Settings) -> datetime:
    with sqlite3.connect(settings.db_path) as conn:
        row = conn.execute(
            "SELECT lease_until FROM grants WHERE company_id = ?", (COMPANY,)
        ).fetchone()
    assert row is not None and row[0] is not None, "no refresh lease is held"
    return optin.store.parse_utc(row[0])


def wait_for_lease(settings: Settings, process: Any) -> None:
    """Wait until a worker holds the refresh lease, which it takes before UPS."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while lease_owner(settings) is None:
        assert process.is_alive(), "the worker exited before taking the lease"
        assert time.monotonic() < deadline, "the worker never took the lease"
        time.sleep(0.02)


def open_links(manager: Manager) -> int:
    table = manager.store.db["pending"]
    return int(table.count_where("company_id = ? AND status = 'open'", [COMPANY]))


# -- two processes, one company -----------------------------------------------


@pytest.mark.parametrize("same_version", [False, True], ids=["racing", "same-version"])
def test_opt_out_race(authorized: Manager, same_version: bool) -> None:
    before = authorized.get_company(COMPANY).version

    outcomes = run_workers(authorized.settings, ["opt_out", "opt_out"], same_version)

    # A loser that read the company after the winner's commit finds opted_out.
    losers = {"ConcurrentUpdate"}
    if not same_version:
        losers.add("InvalidTransition")
    assert outcomes.count("ok") == 1
    assert set(outcomes) - {"ok"} <= losers
    company = authorized.get_company(COMPANY)
    assert company.state is State.OPTED_OUT
    assert company.version == before + 1
    assert triggers(authorized).count("opt_out") == 1
    assert authorized.store.count_grants(COMPANY) == 0
    check_history(authorized)


def test_begin_race_same_version(manager: Manager) -> None:
    manager.add_company(COMPANY, "Acme Ltd", actor=ACTOR)

    outcomes = run_workers(manager.settings, ["begin", "begin"], same_version=True)

    assert outcomes == ["ConcurrentUpdate", "ok"]
    company = manager.get_company(COMPANY)
    assert company.state is State.PENDING
    assert company.version == 1
    assert triggers(manager) == ["add", "request_authorization"]
    assert open_links(manager) == 1
    assert manager.store.db["pending"].count == 1
    check_history(manager)


def test_refresh_race_one_request(
    authorized: Manager, sandbox_http: httpx.Client
) -> None:
    """The refresh lease lets one of two workers send the refresh token."""
    sandbox_http.delete("/_sandbox/requests").raise_for_status()
    add_refresh_delay(sandbox_http, 2.0)
    before = authorized.get_company(COMPANY).version

    outcomes = run_workers(authorized.settings, ["refresh", "refresh"])

    assert outcomes == ["RefreshInProgress", "ok"]
    assert len(refresh_requests(sandbox_http)) == 1
    assert authorized.get_company(COMPANY).version == before + 1
    assert triggers(authorized).count("refresh") == 1
    check_history(authorized)


def test_refresh_after_other_worker(
    authorized: Manager, sandbox_http: httpx.Client
) -> None:
    """A worker that read the company before another worker's refresh finished.

    The other worker's refresh runs to the end between the first worker's
    reads and its claim of the lease, by wrapping the first worker's
    claim_refresh. The refresh token read before the claim is dead by then.
    """
    with Manager(authorized.settings) as late:
        claim = late.store.claim_refresh

        def claim_after_other(*args: Any) -> bool:
            authorized.refresh(COMPANY, actor=ACTOR)
            return claim(*args)

        late.store.claim_refresh = claim_after_other  # type: ignore[method-assign]
        late.refresh(COMPANY, actor=ACTOR)

    statuses = [record["status"] for record in refresh_requests(sandbox_http)]
    assert statuses == [200, 200]
    assert authorized.get_company(COMPANY).state is State.AUTHORIZED
    assert triggers(authorized).count("refresh") == 2
    assert lease_owner(authorized.settings) is None
    authorized.refresh(COMPANY, actor=ACTOR)
    check_history(authorized)


def test_opt_out_during_refresh(
    authorized: Manager, sandbox_http: httpx.Client
) -> None:
    """An opt-out that commits while a refresh waits for UPS wins.

    The refresh then loses its compare-and-set, so the rotated tokens are
    never stored for the opted-out company.
    """
    add_refresh_delay(sandbox_http, 1.5)
    results = SPAWN.Queue()
    process = SPAWN.Process(
        target=worker,
        args=(settings_values(authorized.settings), "refresh", None, False, results),
    )
    process.start()
    wait_for_lease(authorized.settings, process)

    authorized.opt_out(COMPANY, actor=ACTOR, confirm=True)

    name, _ = results.get(timeout=WORKER_TIMEOUT)
    process.join(WORKER_TIMEOUT)
    assert name == "ConcurrentUpdate"
    assert authorized.get_company(COMPANY).state is State.OPTED_OUT
    assert authorized.store.count_grants(COMPANY) == 0
    assert triggers(authorized)[-1] == "opt_out"
    check_history(authorized)


# -- a locked database -------------------------------------------------------------


@pytest.fixture
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> int:
    """Lower the busy timeout, which Store reads when it opens the database."""
    monkeypatch.setattr(optin.store, "BUSY_TIMEOUT_MS", 200)
    return 200


@contextmanager
def write_lock(settings: Settings) -> Iterator[None]:
    """Hold the database's write lock from another connection."""
    conn = sqlite3.connect(settings.db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_locked_database_changes_nothing(
    authorized: Manager, short_busy_timeout: int, sandbox_http: httpx.Client
) -> None:
    with Manager(authorized.settings) as manager:
        manager.add_company("BOLT-02", "Bolt Ltd", actor=ACTOR)
        companies = (COMPANY, "BOLT-02")
        before = {company_id: snapshot(manager, company_id) for company_id in companies}
        sandbox_http.delete("/_sandbox/requests").raise_for_status()
        actions: list[Callable[[], object]] = [
            lambda: manager.begin_opt_in("BOLT-02", actor=ACTOR),
            lambda: manager.opt_out(COMPANY, actor=ACTOR, confirm=True),
            lambda: manager.refresh(COMPANY, actor=ACTOR),
            lambda: manager.record_password_change(COMPANY, actor=ACTOR),
        ]

        with write_lock(manager.settings):
            for action in actions:
                with pytest.raises(
                    DatabaseBusy, match=f"stayed locked for {short_busy_timeout} ms"
                ):
                    action()

        for company_id in companies:
            assert snapshot(manager, company_id) == before[company_id]
        assert refresh_requests(sandbox_http) == []
        manager.refresh(COMPANY, actor=ACTOR)
        manager.begin_opt_in("BOLT-02", actor=ACTOR)
        for company_id in companies:
            check_history(manager, company_id)


# -- a process killed in the middle of a refresh ------------------------------------


class OffsetClock:
    """The real UTC time moved forward by ``offset``."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def test_killed_mid_refresh(authorized: Manager, sandbox_http: httpx.Client) -> None:
    """SIGKILL a worker while its refresh waits at UPS, and lose nothing on disk.

    The worker took the refresh lease and sent the refresh token, and the
    sandbox holds the request in a delay fault, so the kill lands before the
    worker commits. The sandbox has already read the request body, so it
    rotates the token when the delay ends even though the client has gone, as
    UPS does for a request that reached it. The lease outlives the worker until
    it expires. The next refresh then sends the rotated-away token, gets
    GrantRevoked and invalidates the company.
    """
    settings = authorized.settings
    before = snapshot(authorized)
    add_refresh_delay(sandbox_http, KILLED_REFRESH_DELAY)
    results = SPAWN.Queue()
    process = SPAWN.Process(
        target=worker,
        args=(settings_values(settings), "refresh", None, False, results),
    )
    process.start()
    wait_for_lease(settings, process)
    wait_until_fault_taken(sandbox_http, process)

    process.kill()
    process.join(WORKER_TIMEOUT)

    assert process.exitcode == -9
    assert results.empty()
    assert snapshot(authorized) == before
    check_history(authorized)
    assert lease_owner(settings) is not None
    with pytest.raises(RefreshInProgress, match="another worker is refreshing"):
        authorized.refresh(COMPANY, actor=ACTOR)

    wait_for_refresh_requests(sandbox_http, 1)
    assert [grant["rotations"] for grant in live_grants(sandbox_http)] == [1]
    assert snapshot(authorized) == before

    clock = OffsetClock()
    with Manager(settings, clock=clock) as later:
        # Just before, then just after, the dead worker's lease ends.
        clock.offset = lease_end(settings) - datetime.now(UTC) - timedelta(seconds=1)
        with pytest.raises(RefreshInProgress):
            later.refresh(COMPANY, actor=ACTOR)
        clock.offset += timedelta(seconds=2)
        with pytest.raises(GrantRevoked):
            later.refresh(COMPANY, actor=ACTOR)
        assert later.get_company(COMPANY).state is State.INVALIDATED
        assert later.get_company(COMPANY).version == before[1] + 1
        assert later.store.count_grants(COMPANY) == 0
        assert triggers(later)[-1] == "invalidate"
        check_history(later)
    statuses = [record["status"] for record in refresh_requests(sandbox_http)]
    assert statuses[1:] == [400]


def wait_until_fault_taken(http: httpx.Client, process: Any) -> None:
    """Wait until the sandbox has read the refresh request and started its delay."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while http.get("/_sandbox/faults").json():
        assert process.is_alive(), "the worker exited before the sandbox held it"
        assert time.monotonic() < deadline, "the refresh never reached the sandbox"
        time.sleep(0.01)


def wait_for_refresh_requests(http: httpx.Client, count: int) -> None:
    """Wait until the sandbox has finished ``count`` refresh requests."""
    deadline = time.monotonic() + KILLED_REFRESH_DELAY + WORKER_TIMEOUT
    while len(refresh_requests(http)) < count:
        assert time.monotonic() < deadline, "the sandbox never finished the refresh"
        time.sleep(0.05)


def live_grants(http: httpx.Client) -> list[dict[str, Any]]:
    return [grant for grant in http.get("/_sandbox/grants").json() if grant["active"]]
