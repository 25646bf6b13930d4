"""Smoke test of bench/bench_transition.py: it runs and prints well-formed JSON.

The test checks the shape of the output only. Timings on a shared machine vary
too much for a test to assert on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_transition.py"
TIMES = (
    "floor_us",
    "api_us",
    "begin_opt_in_us",
    "cancel_opt_in_us",
    "ratio",
    "ratio_begin_opt_in",
    "ratio_cancel_opt_in",
)


def run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("bench")
    result = run_bench(tmp_path, "--n", "20", "--rounds", "2", "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_bench_times_positive(summary: dict[str, Any]) -> None:
    for key in TIMES:
        assert key in summary, f"missing key {key}"
        assert isinstance(summary[key], float), f"{key}={summary[key]!r}"
        assert summary[key] > 0, f"{key}={summary[key]!r}"


def test_bench_run_settings(summary: dict[str, Any]) -> None:
    assert summary["transitions_per_round"] == 20
    assert summary["rounds"] == 2
    assert summary["target"] == 3.0
    assert isinstance(summary["passed"], bool)
    assert summary["pragmas"] == {
        "journal_mode": "wal",
        "synchronous": 2,
        "busy_timeout": 5000,
        "foreign_keys": 1,
    }


def test_bench_machine_facts(summary: dict[str, Any]) -> None:
    machine = summary["machine"]
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert machine["sqlite"].count(".") == 2
    assert machine["cpu_count"] >= 1


def test_bench_round_results(summary: dict[str, Any]) -> None:
    rounds = summary["round_results"]
    assert len(rounds) == 2
    for result in rounds:
        for key in ("floor_us", "begin_opt_in_us", "cancel_opt_in_us", "api_us"):
            assert result[key] > 0, f"{key}={result[key]!r}"
        assert result["ratio"] == pytest.approx(result["api_us"] / result["floor_us"])


def test_bench_removes_databases(
    summary: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    leftovers = list(base.glob("bench*/optin-bench-*"))
    assert leftovers == []


def test_bench_check_fails_over_target(tmp_path: Path) -> None:
    # Every measured ratio is positive, so it exceeds a target of 0.
    result = run_bench(
        tmp_path, "--n", "4", "--rounds", "1", "--target", "0", "--check"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout


def test_bench_check_passes_under_target(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, "--n", "4", "--rounds", "1", "--target", "1e9", "--check"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout


def test_bench_rejects_odd_n(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--n", "3")
    assert result.returncode == 2
    assert "invalid --n 3" in result.stderr
