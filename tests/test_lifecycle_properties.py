"""Property tests: random sequences of lifecycle triggers through the public API.

A Hypothesis state machine drives a Manager on a real SQLite file against the
loopback UPS sandbox and checks each step against a plain model: a dict of
company -> state, plus the origin state of each pending company.
"""

from __future__ import annotations

import itertools
import secrets
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import make_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from optin import Manager
from optin.config import SANDBOX_REDIRECT_URI
from optin.errors import (
    CallbackError,
    ConfirmationRequired,
    GrantRevoked,
    InvalidTransition,
    TransientError,
    UnknownState,
)
from optin.lifecycle import (
    TRANSITIONS,
    TRIGGERS,
    State,
    allowed_triggers,
    is_allowed,
    next_state,
)
from optin.sandbox import SandboxServer
from optin.signin import sign_in
from tests.helpers import MovableClock

COMPANIES = ("ACME-01", "BOLT-02")
ACTOR = "property-test"
TOKEN_PATH = "/security/v1/oauth/token"

Pair = tuple[str, str]
ALLOWED_PAIRS: frozenset[Pair] = frozenset(
    (transition.trigger, source.value)
    for transition in TRANSITIONS
    for source in transition.sources
)
ALL_PAIRS: frozenset[Pair] = frozenset(
    itertools.product(TRIGGERS, [state.value for state in State])
)
DISALLOWED_PAIRS = ALL_PAIRS - ALLOWED_PAIRS

# Where each trigger leads, written out independently of the lifecycle table.
# request_authorization and cancel depend on the origin (see expected_move).
FIXED_DESTINATIONS = {
    "authorize": State.AUTHORIZED,
    "refresh": State.AUTHORIZED,
    "invalidate": State.INVALIDATED,
    "opt_out": State.OPTED_OUT,
}

MACHINE_SETTINGS = settings(
    max_examples=10,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def expected_move(
    trigger: str, state: State, origin: State | None
) -> tuple[State, State | None]:
    """Return the model's (state, origin) after an allowed ``trigger``."""
    if trigger == "request_authorization":
        return State.PENDING, origin if state is State.PENDING else state
    if trigger == "cancel":
        assert origin is not None, "a pending company always has an origin"
        return origin, None
    return FIXED_DESTINATIONS[trigger], None


def login_of(company_id: str) -> str:
    return f"admin-{company_id.lower()}"


class LifecycleMachine(RuleBasedStateMachine):
    """Drive every trigger in every state and compare the store with the model.

    A rule whose trigger the model does not allow expects InvalidTransition
    and no change at all. Callbacks (authorize, or cancel by
    error=access_denied) for a company that is not pending are the exception.
    The API checks the callback's link before the lifecycle, and such a
    company has no open link, so the expected error is a CallbackError.
    """

    def __init__(
        self,
        sandbox_url: str,
        workdir: Path,
        exercised: set[Pair],
        sweep: bool = False,
    ) -> None:
        super().__init__()
        self.exercised = exercised
        self.sweep = sweep
        # Pairs run in this example only, so that each example behaves the
        # same when Hypothesis replays or shrinks it.
        self.exercised_here: set[Pair] = set()

        self.http = httpx.Client(base_url=sandbox_url, follow_redirects=False)
        self.http.post("/_sandbox/reset").raise_for_status()
        database_dir = Path(tempfile.mkdtemp(dir=workdir))
        self.settings = make_settings(database_dir, sandbox_url)
        self.clock = MovableClock()
        self.manager = Manager(self.settings, clock=self.clock)

        self.state: dict[str, State] = {}
        self.origin: dict[str, State | None] = {}
        self.newest_link: dict[str, str] = {}
        self.password: dict[str, str] = {}
        self.password_changes = itertools.count(1)
        for company_id in COMPANIES:
            self.manager.add_company(company_id, f"{company_id} Ltd", actor=ACTOR)
            self.state[company_id] = State.UNAUTHORIZED
            self.origin[company_id] = None
            login = login_of(company_id)
            self.password[company_id] = f"{login}-password-0"
            self.http.post(
                "/_sandbox/users",
                json={
                    "username": login,
                    "email": f"{login}@example.test",
                    "password": self.password[company_id],
                },
            ).raise_for_status()

    def teardown(self) -> None:
        self.manager.close()
        self.http.close()

    # -- helpers ----------------------------------------------------------

    def _snapshot(self, company_id: str) -> tuple[object, ...]:
        company = self.manager.get_company(company_id)
        store = self.manager.store
        return (
            company.state,
            company.version,
            len(store.history(company_id)),
            store.count_grants(company_id),
            self._open_links(company_id),
        )

    def _open_links(self, company_id: str) -> int:
        table = self.manager.store.db["pending"]
        return int(
            table.count_where("company_id = ? AND status = 'open'", [company_id])
        )

    def _record(self, trigger: str, company_id: str) -> bool:
        """Record the (trigger, state) pair and return whether it is allowed."""
        state = self.state[company_id].value
        self.exercised.add((trigger, state))
        self.exercised_here.add((trigger, state))
        return is_allowed(trigger, state)

    def _apply_model(self, trigger: str, company_id: str) -> None:
        state, origin = expected_move(
            trigger, self.state[company_id], self.origin[company_id]
        )
        self.state[company_id] = state
        self.origin[company_id] = origin

    def _expect_rejected(
        self, company_id: str, trigger: str, action: Callable[[], object]
    ) -> None:
        before = self._snapshot(company_id)
        state = self.state[company_id].value
        with pytest.raises(InvalidTransition) as raised:
            action()
        error = raised.value
        assert error.company_id == company_id
        assert error.trigger == trigger
        assert error.state == state
        message = str(error)
        assert repr(company_id) in message
        assert trigger in message
        assert repr(state) in message
        assert self._snapshot(company_id) == before

    def _token_requests(self) -> int:
        records = self.http.get("/_sandbox/requests").json()
        return sum(1 for record in records if record["path"] == TOKEN_PATH)

    def _expect_callback_rejected(self, company_id: str, allow: bool) -> None:
        """Complete a callback for a company that is not pending and expect an error.

        With a link issued earlier, the admin signs in through it again and
        the sandbox issues a fresh callback. Without one, the callback carries
        a state value that this database never issued.
        """
        before = self._snapshot(company_id)
        self.http.delete("/_sandbox/requests").raise_for_status()
        link = self.newest_link.get(company_id)
        expected: type[CallbackError] = CallbackError
        if link is None:
            expected = UnknownState
            outcome = "code=Zm9v%2Bbar%2F%3D" if allow else "error=access_denied"
            url = f"{SANDBOX_REDIRECT_URI}?{outcome}&state={secrets.token_urlsafe(32)}"
        else:
            url = sign_in(
                self.http,
                link,
                login_of(company_id),
                self.password[company_id],
                allow=allow,
            )
        with pytest.raises(expected) as raised:
            self.manager.complete_opt_in(url, actor=ACTOR)
        if link is not None:
            assert repr(company_id) in str(raised.value)
        assert self._snapshot(company_id) == before
        assert self._token_requests() == 0

    # -- one method per trigger ---------------------------------------------

    def _request_authorization(self, company_id: str) -> None:
        if not self._record("request_authorization", company_id):
            self._expect_rejected(
                company_id,
                "request_authorization",
                lambda: self.manager.begin_opt_in(company_id, actor=ACTOR),
            )
            return
        link = self.manager.begin_opt_in(company_id, actor=ACTOR)
        assert link.company_id == company_id
        self.newest_link[company_id] = link.url
        self._apply_model("request_authorization", company_id)

    def _cancel(self, company_id: str) -> None:
        if not self._record("cancel", company_id):
            self._expect_rejected(
                company_id,
                "cancel",
                lambda: self.manager.cancel_opt_in(company_id, actor=ACTOR),
            )
            return
        company = self.manager.cancel_opt_in(company_id, actor=ACTOR)
        self._apply_model("cancel", company_id)
        assert company.state is self.state[company_id]

    def _authorize(self, company_id: str) -> None:
        if not self._record("authorize", company_id):
            self._expect_callback_rejected(company_id, allow=True)
            return
        url = sign_in(
            self.http,
            self.newest_link[company_id],
            login_of(company_id),
            self.password[company_id],
        )
        result = self.manager.complete_opt_in(url, actor=ACTOR)
        assert result.outcome == "authorized"
        self._apply_model("authorize", company_id)
        self._assert_access_token_active(company_id)

    def _deny_consent(self, company_id: str) -> None:
        if not self._record("cancel", company_id):
            self._expect_callback_rejected(company_id, allow=False)
            return
        url = sign_in(
            self.http,
            self.newest_link[company_id],
            login_of(company_id),
            self.password[company_id],
            allow=False,
        )
        result = self.manager.complete_opt_in(url, actor=ACTOR)
        assert result.outcome == "cancelled"
        self._apply_model("cancel", company_id)
        assert result.company.state is self.state[company_id]

    def _refresh(self, company_id: str) -> None:
        if not self._record("refresh", company_id):
            self._expect_rejected(
                company_id,
                "refresh",
                lambda: self.manager.refresh(company_id, actor=ACTOR),
            )
            return
        old = self.manager.store.get_grant(company_id)
        assert old is not None
        self.manager.refresh(company_id, actor=ACTOR)
        new = self.manager.store.get_grant(company_id)
        assert new is not None
        assert new.refresh_token != old.refresh_token
        self._apply_model("refresh", company_id)
        self._assert_access_token_active(company_id)

    def _record_password_change(self, company_id: str) -> None:
        if not self._record("invalidate", company_id):
            self._expect_rejected(
                company_id,
                "invalidate",
                lambda: self.manager.record_password_change(company_id, actor=ACTOR),
            )
            return
        self.manager.record_password_change(company_id, actor=ACTOR)
        self._apply_model("invalidate", company_id)

    def _change_password_at_ups(self, company_id: str) -> None:
        """Change the user's password in the sandbox, then refresh.

        The sandbox kills the user's grants, so the refresh of an authorized
        company invalidates it. In any other state the refresh is rejected.
        """
        login = login_of(company_id)
        password = f"{login}-password-{next(self.password_changes)}"
        self.http.post(
            f"/_sandbox/users/{login}/password", json={"password": password}
        ).raise_for_status()
        self.password[company_id] = password
        if self.state[company_id] is not State.AUTHORIZED:
            self._record("refresh", company_id)
            self._expect_rejected(
                company_id,
                "refresh",
                lambda: self.manager.refresh(company_id, actor=ACTOR),
            )
            return
        self._record("invalidate", company_id)
        with pytest.raises(GrantRevoked, match="Invalid Refresh Token"):
            self.manager.refresh(company_id, actor=ACTOR)
        self._apply_model("invalidate", company_id)
        last = self.manager.store.history(company_id)[-1]
        assert last["trigger"] == "invalidate"
        assert last["details"]["ups_status"] == 400

    def _opt_out(self, company_id: str) -> None:
        if not self._record("opt_out", company_id):
            self._expect_rejected(
                company_id,
                "opt_out",
                lambda: self.manager.opt_out(company_id, actor=ACTOR, confirm=True),
            )
            return
        before = self._snapshot(company_id)
        with pytest.raises(ConfirmationRequired, match="confirm=True"):
            self.manager.opt_out(company_id, actor=ACTOR)
        assert self._snapshot(company_id) == before
        self.manager.opt_out(company_id, actor=ACTOR, confirm=True)
        self._apply_model("opt_out", company_id)

    def _assert_access_token_active(self, company_id: str) -> None:
        grant = self.manager.store.get_grant(company_id)
        assert grant is not None
        response = self.http.post(
            "/_sandbox/introspect",
            json={"access_token": grant.access_token.reveal()},
        )
        assert response.json()["active"] is True

    # -- coverage sweep -------------------------------------------------------

    def _actions(self) -> dict[str, Callable[[str], None]]:
        return {
            "request_authorization": self._request_authorization,
            "cancel": self._cancel,
            "authorize": self._authorize,
            "refresh": self._refresh,
            "invalidate": self._record_password_change,
            "opt_out": self._opt_out,
        }

    def _first_step_towards(self, company_id: str, targets: set[str]) -> str | None:
        """Return the first trigger on a shortest path to a state in ``targets``."""
        start = (self.state[company_id], self.origin[company_id])
        first_step: dict[tuple[State, State | None], str | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            state, origin = node
            if state.value in targets and first_step[node] is not None:
                return first_step[node]
            for trigger in allowed_triggers(state):
                following = expected_move(trigger, state, origin)
                if following not in first_step:
                    first_step[following] = first_step[node] or trigger
                    queue.append(following)
        return None

    @initialize()
    def cover_every_pair(self) -> None:
        """Walk the first company through every (trigger, state) pair, if asked.

        Every company starts unauthorized, from where each state is reachable,
        so one walk covers the whole table before the random rules run. The
        walk stops early when a trigger has no method here, which the coverage
        test then reports.
        """
        if not self.sweep:
            return
        company_id = COMPANIES[0]
        actions = self._actions()
        for _ in range(4 * len(ALL_PAIRS)):
            gaps = ALL_PAIRS - self.exercised_here
            if not gaps:
                return
            state = self.state[company_id].value
            # Rejected triggers come first because they leave the company where
            # it is.
            here = sorted(
                (trigger for trigger, source in gaps if source == state),
                key=lambda trigger: (is_allowed(trigger, state), trigger),
            )
            if here:
                trigger: str | None = here[0]
            else:
                trigger = self._first_step_towards(
                    company_id, {source for _, source in gaps}
                )
            if trigger is None or trigger not in actions:
                return
            actions[trigger](company_id)
            self.check_all()

    # -- rules ------------------------------------------------------------------

    companies = st.sampled_from(COMPANIES)

    @rule(company_id=companies)
    def request_authorization(self, company_id: str) -> None:
        self._request_authorization(company_id)

    @rule(company_id=companies)
    def cancel(self, company_id: str) -> None:
        self._cancel(company_id)

    @rule(company_id=companies)
    def authorize(self, company_id: str) -> None:
        self._authorize(company_id)

    @rule(company_id=companies)
    def deny_consent(self, company_id: str) -> None:
        self._deny_consent(company_id)

    @rule(company_id=companies)
    def refresh(self, company_id: str) -> None:
        self._refresh(company_id)

    @rule(company_id=companies)
    def record_password_change(self, company_id: str) -> None:
        self._record_password_change(company_id)

    @rule(company_id=companies)
    def change_password_at_ups(self, company_id: str) -> None:
        self._change_password_at_ups(company_id)

    @rule(company_id=companies)
    def opt_out(self, company_id: str) -> None:
        self._opt_out(company_id)

    @rule(company_id=companies, data=st.data())
    def allowed_trigger(self, company_id: str, data: st.DataObject) -> None:
        """Apply a trigger that the state allows, so that runs reach deep states."""
        choices = allowed_triggers(self.state[company_id])
        trigger = data.draw(st.sampled_from(choices), label="trigger")
        self._actions()[trigger](company_id)

    @rule()
    def expire_links(self) -> None:
        """Move the clock past the link lifetime, so every pending company cancels."""
        pending = [c for c in COMPANIES if self.state[c] is State.PENDING]
        for company_id in pending:
            self._record("cancel", company_id)
        self.clock.advance(self.settings.link_lifetime + 1)
        assert sorted(self.manager.expire_links(actor=ACTOR)) == pending
        for company_id in pending:
            self._apply_model("cancel", company_id)

    @rule(company_id=companies, status=st.sampled_from([429, 500, 503]))
    def refresh_fails_at_ups(self, company_id: str, status: int) -> None:
        """A refresh that fails at UPS with 429 or 5xx changes nothing."""
        if self.state[company_id] is not State.AUTHORIZED:
            self._refresh(company_id)
            return
        before = self._snapshot(company_id)
        grant = self.manager.store.get_grant(company_id)
        self.http.post(
            "/_sandbox/faults",
            json={"endpoint": "refresh", "status": status, "count": 1},
        ).raise_for_status()
        with pytest.raises(TransientError, match=f"HTTP {status}"):
            self.manager.refresh(company_id, actor=ACTOR)
        assert self._snapshot(company_id) == before
        assert self.manager.store.get_grant(company_id) == grant

    @rule()
    def reopen(self) -> None:
        self.manager.close()
        self.manager = Manager(self.settings, clock=self.clock)

    # -- invariants -------------------------------------------------------------

    @invariant()
    def check_all(self) -> None:
        for company_id in COMPANIES:
            self._check_state(company_id)
            self._check_tokens(company_id)
            self._check_links(company_id)
            self._check_history(company_id)

    def _check_state(self, company_id: str) -> None:
        company = self.manager.get_company(company_id)
        assert company.state is self.state[company_id]
        assert self.manager.allowed_triggers(company_id) == allowed_triggers(
            self.state[company_id]
        )

    def _check_tokens(self, company_id: str) -> None:
        authorized = self.state[company_id] is State.AUTHORIZED
        assert self.manager.store.count_grants(company_id) == int(authorized)

    def _check_links(self, company_id: str) -> None:
        pending = self.state[company_id] is State.PENDING
        assert self._open_links(company_id) == int(pending)

    def _check_history(self, company_id: str) -> None:
        rows = self.manager.store.history(company_id)
        first = rows[0]
        assert first["trigger"] == "add"
        assert first["from_state"] is None
        replayed = first["to_state"]
        for row in rows[1:]:
            assert row["from_state"] == replayed, f"history row {row['id']} breaks"
            moved = next_state(
                company_id, row["trigger"], row["from_state"], row["to_state"]
            )
            assert moved.value == row["to_state"]
            replayed = row["to_state"]
        assert replayed == self.state[company_id].value
        assert self.manager.get_company(company_id).version == len(rows) - 1


def run_machine(
    sandbox: SandboxServer,
    tmp_path: Path,
    machine_settings: settings,
    sweep: bool = False,
) -> set[Pair]:
    """Run the state machine and return the (trigger, state) pairs it exercised."""
    exercised: set[Pair] = set()
    run_state_machine_as_test(
        lambda: LifecycleMachine(sandbox.url, tmp_path, exercised, sweep),
        settings=machine_settings,
    )
    return exercised


def test_pairs_match_lifecycle() -> None:
    assert {pair for pair in ALL_PAIRS if is_allowed(*pair)} == ALLOWED_PAIRS
    assert DISALLOWED_PAIRS
    assert ALLOWED_PAIRS


def test_machine_random(sandbox: SandboxServer, tmp_path: Path) -> None:
    run_machine(sandbox, tmp_path, MACHINE_SETTINGS)


def test_machine_covers_table(sandbox: SandboxServer, tmp_path: Path) -> None:
    exercised = run_machine(
        sandbox, tmp_path, settings(MACHINE_SETTINGS, derandomize=True), sweep=True
    )
    missing_allowed = sorted(ALLOWED_PAIRS - exercised)
    missing_disallowed = sorted(DISALLOWED_PAIRS - exercised)
    assert not missing_allowed, f"allowed pairs never run: {missing_allowed}"
    assert not missing_disallowed, f"rejected pairs never run: {missing_disallowed}"
