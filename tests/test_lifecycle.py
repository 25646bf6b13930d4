"""The lifecycle table and the shared machine built from it."""

from __future__ import annotations

import pytest

from optin import InvalidTransition, State, StoreError
from optin.lifecycle import (
    MACHINE,
    TRANSITIONS,
    allowed_triggers,
    mermaid_diagram,
    next_state,
)


def test_no_auto_transitions() -> None:
    assert not any(name.startswith("to_") for name in MACHINE.events)


def test_cancel_needs_origin() -> None:
    assert next_state("A", "cancel", State.PENDING, State.OPTED_OUT) is State.OPTED_OUT
    with pytest.raises(StoreError, match="needs the origin state"):
        next_state("A", "cancel", State.PENDING, None)


def test_invalid_trigger_names_allowed() -> None:
    expected = "allowed triggers are: request_authorization"
    with pytest.raises(InvalidTransition, match=expected):
        next_state("A", "authorize", State.OPTED_OUT)


def test_allowed_match_table() -> None:
    for state in State:
        expected = {t.trigger for t in TRANSITIONS if state in t.sources}
        assert set(allowed_triggers(state)) == expected


def test_diagram_counts_each_state() -> None:
    text = mermaid_diagram({"pending": 4})
    assert 'state "pending (4)" as pending' in text
    assert 'state "authorized (0)" as authorized' in text
