"""The opt-in lifecycle: states and transitions as one table, and one machine.

Everything else reads :data:`TRANSITIONS`: the store's checks, the API, the
console's enabled buttons, the README's diagram and the property tests. No
I/O happens here.

One :class:`transitions.Machine` is built at import time and shared by all
companies. A company is never attached to it: the API looks up the machine's
event table for the transitions that exist (see :func:`next_state`), and the store
applies the result as a compare-and-set on (state, version), so the database
commit decides every transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from transitions import Machine

from optin.errors import InvalidTransition, StoreError


class State(StrEnum):
    UNAUTHORIZED = "unauthorized"
    PENDING = "pending"
    AUTHORIZED = "authorized"
    INVALIDATED = "invalidated"
    OPTED_OUT = "opted_out"


# ``cancel`` returns a pending company to the state it was in before its
# opt-in began; the table marks that destination with this name.
ORIGIN: Final = "origin"


@dataclass(frozen=True)
class Transition:
    trigger: str
    sources: tuple[State, ...]
    dest: State | str
    when: str

    @property
    def dest_label(self) -> str:
        return "the state it came from" if self.dest == ORIGIN else str(self.dest)


S = State
TRANSITIONS: Final[tuple[Transition, ...]] = (
    Transition(
        "request_authorization",
        (S.UNAUTHORIZED, S.INVALIDATED, S.OPTED_OUT),
        S.PENDING,
        "an analyst clicks OAuth and Continue, or a batch re-opt-in starts; "
        "a fresh state value and PKCE verifier are made",
    ),
    Transition(
        "request_authorization",
        (S.PENDING,),
        S.PENDING,
        "a new link supersedes the old one, whose state is then rejected",
    ),
    Transition(
        "cancel",
        (S.PENDING,),
        ORIGIN,
        "Cancel in the dialog, error=access_denied in the callback, "
        "or the link expired",
    ),
    Transition(
        "authorize",
        (S.PENDING,),
        S.AUTHORIZED,
        "a callback with a valid state; the code was exchanged and tokens stored",
    ),
    Transition(
        "refresh",
        (S.AUTHORIZED,),
        S.AUTHORIZED,
        "tokens refreshed (the rotated pair is stored)",
    ),
    Transition(
        "invalidate",
        (S.AUTHORIZED,),
        S.INVALIDATED,
        "UPS rejected the refresh token (password change, expiry, reuse), "
        "or an analyst records a known password change",
    ),
    Transition(
        "opt_out",
        (S.PENDING, S.AUTHORIZED, S.INVALIDATED),
        S.OPTED_OUT,
        "confirmed opt-out; every token of the company is deleted",
    ),
)
del S

TRIGGERS: Final[tuple[str, ...]] = tuple(dict.fromkeys(t.trigger for t in TRANSITIONS))
# States a pending company can return to with ``cancel``.
ORIGIN_STATES: Final = (State.UNAUTHORIZED, State.INVALIDATED, State.OPTED_OUT)


def _machine_transitions() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for transition in TRANSITIONS:
        for source in transition.sources:
            if transition.dest != ORIGIN:
                rows.append(
                    {
                        "trigger": transition.trigger,
                        "source": source.value,
                        "dest": str(transition.dest),
                    }
                )
                continue
            # One machine transition per possible origin, each guarded by a
            # condition, so the machine itself lists every real destination.
            for origin in ORIGIN_STATES:
                rows.append(
                    {
                        "trigger": transition.trigger,
                        "source": source.value,
                        "dest": origin.value,
                        "conditions": f"came_from_{origin.value}",
                    }
                )
    return rows


def build_machine(model: object = None, **options: Any) -> Machine:
    """Build a machine over the lifecycle table (no ``to_<state>`` shortcuts)."""
    return Machine(
        model=model,
        states=[state.value for state in State],
        transitions=_machine_transitions(),
        auto_transitions=False,
        initial=None if model is None else State.UNAUTHORIZED.value,
        **options,
    )


MACHINE: Final = build_machine()

# (trigger, source) -> the destinations the machine lists for it, read once
# from the machine's event table: a dict lookup per check on the hot path.
_DESTINATIONS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    (name, source): tuple(str(t.dest) for t in moves)
    for name, event in MACHINE.events.items()
    for source, moves in event.transitions.items()
}


def allowed_triggers(state: State | str) -> tuple[str, ...]:
    """Return the triggers the machine allows in ``state``, in table order."""
    return tuple(t for t in TRIGGERS if (t, str(state)) in _DESTINATIONS)


def is_allowed(trigger: str, state: State | str) -> bool:
    return (trigger, str(state)) in _DESTINATIONS


def next_state(
    company_id: str, trigger: str, state: State | str, origin: State | str | None = None
) -> State:
    """Return where ``trigger`` leads from ``state``, or raise InvalidTransition.

    ``origin`` is the state a pending company came from; ``cancel`` needs it.
    """
    destinations = _DESTINATIONS.get((trigger, str(state)))
    if destinations is None:
        raise InvalidTransition(
            company_id, trigger, str(state), allowed_triggers(state)
        )
    if len(destinations) == 1:
        return State(destinations[0])
    if origin is not None and str(origin) in destinations:
        return State(str(origin))
    raise StoreError(
        f"{trigger} from {state!s} needs the origin state of company_id="
        f"{company_id!r}, one of {', '.join(destinations)}, but the stored link "
        f"names {origin!r}; opt the company out or begin a new opt-in"
    )


def transition_rows() -> list[tuple[str, str, str, str]]:
    """Return (trigger, from, to, when) rows of the table, for docs and UIs."""
    return [
        (t.trigger, ", ".join(s.value for s in t.sources), t.dest_label, t.when)
        for t in TRANSITIONS
    ]


def mermaid_diagram(counts: dict[str, int] | None = None) -> str:
    """Draw the lifecycle as a Mermaid state diagram, with optional counts.

    The edges come from ``transitions``' own Mermaid output for the shared
    table; ``counts`` adds the number of companies to each state's label.
    """
    from transitions.extensions.diagrams import GraphMachine

    class _Sketch:
        pass

    sketch = _Sketch()
    GraphMachine(
        model=sketch,
        states=[state.value for state in State],
        transitions=_machine_transitions(),
        auto_transitions=False,
        initial=State.UNAUTHORIZED.value,
        graph_engine="mermaid",
        title="optin lifecycle",
        show_conditions=False,
    )
    text: str = sketch.get_graph().draw(None)  # type: ignore[attr-defined]
    # Keep the states and edges; drop the styling of the "current" state,
    # which means nothing for a table shared by all companies.
    body = text.split("stateDiagram-v2", 1)[1].splitlines()
    lines = ["---", "title: optin lifecycle", "---", "stateDiagram-v2"]
    lines += [
        line.rstrip()
        for line in body
        if line.strip() and not line.strip().startswith(("Class ", "classDef "))
    ]

    if counts is not None:
        for state in State:
            old = f'state "{state.value}" as {state.value}'
            new = (
                f'state "{state.value} ({counts.get(state.value, 0)})" as {state.value}'
            )
            lines = [line.replace(old, new) for line in lines]
    return "\n".join(lines) + "\n"


def lifecycle_markdown() -> str:
    """Render the table and the Mermaid diagram as Markdown, for the README."""
    lines = ["| trigger | from | to | when |", "|---|---|---|---|"]
    for trigger, sources, dest, when in transition_rows():
        lines.append(f"| `{trigger}` | {sources} | {dest} | {when} |")
    return "\n".join(lines) + "\n\n```mermaid\n" + mermaid_diagram() + "```\n"
