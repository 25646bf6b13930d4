"""The demo runs the whole lifecycle against its embedded sandbox."""

from __future__ import annotations

from pathlib import Path

from optin import Manager, Settings, State
from optin.demo import run_demo

COMPANIES = Path(__file__).resolve().parent.parent / "data" / "companies.csv"


def test_demo_final_states(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    lines: list[str] = []
    assert run_demo(db, COMPANIES, echo=lines.append) == 0
    with Manager(Settings.build({"db_path": db})) as manager:
        counts = manager.count_by_state()
        invalidations = [
            entry for entry in manager.get_history() if entry.trigger == "invalidate"
        ]
    assert counts[State.AUTHORIZED.value] == 24
    assert counts[State.OPTED_OUT.value] == 1
    assert len(invalidations) == 3
    assert any("final state" in line for line in lines)


def test_demo_rerun_starts_fresh(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    assert run_demo(db, COMPANIES, echo=lambda line: None) == 0
    assert run_demo(db, COMPANIES, echo=lambda line: None) == 0
    with Manager(Settings.build({"db_path": db})) as manager:
        adds = [e for e in manager.get_history() if e.trigger == "add"]
    assert len(adds) == 25


def test_demo_spares_other_database(tmp_path: Path) -> None:
    db = tmp_path / "real.db"
    with Manager(Settings.build({"db_path": db})) as manager:
        manager.add_company("REAL-1", "Real customer", actor="ana")
    lines: list[str] = []
    assert run_demo(db, COMPANIES, echo=lines.append) == 1
    assert "was not made by the demo" in lines[0]
    with Manager(Settings.build({"db_path": db})) as manager:
        assert [c.id for c in manager.list_companies()] == ["REAL-1"]
