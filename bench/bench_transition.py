"""Measure one durable lifecycle transition through the public API against SQLite.

Two databases are created in one temporary directory, so they sit on the same
disk. The floor is the least work a durable compare-and-set transition can do:
one ``UPDATE companies ... WHERE id = ? AND state = ? AND version = ?`` and one
``INSERT INTO history`` in a ``BEGIN IMMEDIATE`` transaction, through raw
``sqlite3`` with the pragmas of ``optin.store.Store``. The API side calls
``Manager.begin_opt_in`` and ``Manager.cancel_opt_in`` in turn on a set of
companies, so each call is one committed transition. Neither side sends any
HTTP request, because ``begin_opt_in`` only builds the UPS.com link.

Rounds of the two sides alternate, and their order flips every round, so that
noise from other load on the machine hits both sides alike. Each round yields
the median time of a floor transition, of a ``begin_opt_in`` call and of a
``cancel_opt_in`` call. The API figure of a round is the mean of its two
trigger medians. The reported times are medians over the rounds, and each
ratio is the median of the per-round ratios to the floor.

Usage: python bench/bench_transition.py [--n N] [--rounds R] [--json] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

# Import optin from the checkout that contains this file, so the numbers belong
# to this source tree even when another copy of the package is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optin import Manager, Settings
from optin.store import Store

DESCRIPTION = "Time one durable transition through optin's API and raw SQLite."
TARGET_RATIO = 3.0
ACTOR = "bench"
# The pragmas Store sets on its connection, in the form PRAGMA reports them:
# journal_mode is a name, synchronous=FULL reads back as 2, foreign_keys as 1.
PRAGMAS: dict[str, str | int] = {
    "journal_mode": "wal",
    "synchronous": 2,
    "busy_timeout": 5000,
    "foreign_keys": 1,
}


@dataclass
class RoundResult:
    """Per-transition times of one round, in microseconds."""

    floor_us: float
    begin_us: float
    cancel_us: float
    api_us: float

    @property
    def ratio(self) -> float:
        return self.api_us / self.floor_us


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def company_ids(count: int) -> list[str]:
    return [f"BENCH-{number:05d}" for number in range(count)]


def read_pragmas(conn: sqlite3.Connection) -> dict[str, str | int]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS}


class Floor:
    """Raw sqlite3 transitions on a database with the product's schema."""

    def __init__(self, path: Path, ids: list[str]) -> None:
        # Store creates the schema (tables, indexes, history triggers) and the
        # companies, then the raw connection below does every timed write.
        store = Store(path, Fernet(Fernet.generate_key()))
        rows = [{"id": i, "name": f"Company {i}", "admin_email": ""} for i in ids]
        store.add_companies(rows, ACTOR, None)
        store.close()

        self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=5.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.ids = ids
        self.state = dict.fromkeys(ids, "unauthorized")
        self.version = dict.fromkeys(ids, 0)

    def transition(self, company_id: str, to_state: str) -> None:
        """Move one company to ``to_state`` in one durable transaction."""
        from_state = self.state[company_id]
        version = self.version[company_id]
        at = utc_now_text()
        self.conn.execute("BEGIN IMMEDIATE")
        cursor = self.conn.execute(
            "UPDATE companies SET state = ?, version = version + 1, updated_at = ? "
            "WHERE id = ? AND state = ? AND version = ?",
            (to_state, at, company_id, from_state, version),
        )
        if cursor.rowcount != 1:
            self.conn.execute("ROLLBACK")
            raise RuntimeError(
                f"floor compare-and-set failed for {company_id} at "
                f"({from_state}, {version}); the benchmark's copy of the state is "
                "out of step with the database, which is a bug in this script"
            )
        self.conn.execute(
            "INSERT INTO history (company_id, from_state, to_state, trigger, actor, "
            "reason, at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (company_id, from_state, to_state, "move", ACTOR, None, at, None),
        )
        self.conn.execute("COMMIT")
        self.state[company_id] = to_state
        self.version[company_id] = version + 1

    def run_round(self) -> list[int]:
        """Move every company to pending and back, timing each call in nanoseconds."""
        timings: list[int] = []
        for to_state in ("pending", "unauthorized"):
            for company_id in self.ids:
                start = time.perf_counter_ns()
                self.transition(company_id, to_state)
                timings.append(time.perf_counter_ns() - start)
        return timings

    def close(self) -> None:
        self.conn.close()


class ApiSide:
    """Transitions through ``Manager`` on its own database file."""

    def __init__(self, directory: Path, ids: list[str]) -> None:
        settings = Settings.build(
            {
                "environment": "sandbox",
                "db_path": directory / "api.db",
                "key_file": directory / "api.key",
            }
        )
        self.manager = Manager(settings)
        self.manager.import_companies(
            [{"id": i, "name": f"Company {i}", "admin_email": ""} for i in ids],
            actor=ACTOR,
        )
        self.ids = ids

    def run_round(self) -> tuple[list[int], list[int]]:
        """Begin and then cancel an opt-in for every company.

        Returns the nanoseconds of each ``begin_opt_in`` and each
        ``cancel_opt_in`` call. Every company is back in ``unauthorized`` at
        the end, so all rounds start from the same states.
        """
        begin = self._time_calls(self.manager.begin_opt_in)
        cancel = self._time_calls(self.manager.cancel_opt_in)
        return begin, cancel

    def _time_calls(self, call: Callable[..., Any]) -> list[int]:
        timings: list[int] = []
        for company_id in self.ids:
            start = time.perf_counter_ns()
            call(company_id, actor=ACTOR)
            timings.append(time.perf_counter_ns() - start)
        return timings

    def close(self) -> None:
        self.manager.close()


def median_us(timings: list[int]) -> float:
    return statistics.median(timings) / 1000.0


def run_benchmark(
    transitions: int, rounds: int, directory: Path
) -> tuple[list[RoundResult], dict[str, dict[str, str | int]]]:
    """Run ``rounds`` interleaved rounds of ``transitions`` transitions per side.

    Returns the per-round results and the pragmas read back from each side's
    connection.
    """
    ids = company_ids(transitions // 2)
    floor = Floor(directory / "floor.db", ids)
    api = ApiSide(directory, ids)
    try:
        pragmas = {
            "floor": read_pragmas(floor.conn),
            "api": read_pragmas(api.manager.store.conn),
        }
        for side, values in pragmas.items():
            if values != PRAGMAS:
                raise RuntimeError(
                    f"the {side} connection has pragmas {values}, expected "
                    f"{PRAGMAS}; make PRAGMAS and Floor match optin.store.Store"
                )

        # One untimed round each warms the page cache, the WAL and the code.
        floor.run_round()
        api.run_round()

        results: list[RoundResult] = []
        for number in range(rounds):
            if number % 2 == 0:
                floor_timings = floor.run_round()
                begin, cancel = api.run_round()
            else:
                begin, cancel = api.run_round()
                floor_timings = floor.run_round()
            results.append(
                RoundResult(
                    floor_us=median_us(floor_timings),
                    begin_us=median_us(begin),
                    cancel_us=median_us(cancel),
                    # The two medians weigh equally because a round makes as
                    # many begin_opt_in calls as cancel_opt_in calls. A median
                    # of the pooled calls would fall between their two peaks.
                    api_us=(median_us(begin) + median_us(cancel)) / 2,
                )
            )
        return results, pragmas
    finally:
        floor.close()
        api.close()


def machine_facts(directory: Path) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "temp_dir": str(directory),
    }


def summarize(
    results: list[RoundResult],
    transitions: int,
    target: float,
    facts: dict[str, Any],
    pragmas: dict[str, dict[str, str | int]],
) -> dict[str, Any]:
    """Reduce the rounds to medians and ratios, in the form that --json prints."""
    floor_us = statistics.median(r.floor_us for r in results)
    begin_us = statistics.median(r.begin_us for r in results)
    cancel_us = statistics.median(r.cancel_us for r in results)
    api_us = statistics.median(r.api_us for r in results)
    ratio = statistics.median(r.ratio for r in results)
    return {
        "machine": facts,
        "pragmas": pragmas["api"],
        "transitions_per_round": transitions,
        "rounds": len(results),
        "floor_us": floor_us,
        "api_us": api_us,
        "begin_opt_in_us": begin_us,
        "cancel_opt_in_us": cancel_us,
        "ratio": ratio,
        "ratio_begin_opt_in": statistics.median(
            r.begin_us / r.floor_us for r in results
        ),
        "ratio_cancel_opt_in": statistics.median(
            r.cancel_us / r.floor_us for r in results
        ),
        "target": target,
        "passed": ratio <= target,
        "round_results": [
            {
                "floor_us": r.floor_us,
                "begin_opt_in_us": r.begin_us,
                "cancel_opt_in_us": r.cancel_us,
                "api_us": r.api_us,
                "ratio": r.ratio,
            }
            for r in results
        ],
    }


def print_report(summary: dict[str, Any]) -> None:
    facts = summary["machine"]
    print(
        f"python {facts['python']}, sqlite {facts['sqlite']}, "
        f"{facts['cpu_count']} CPUs, {facts['platform']}"
    )
    print(f"databases in {facts['temp_dir']}, pragmas {summary['pragmas']}")
    print(
        f"{summary['rounds']} rounds of {summary['transitions_per_round']} "
        "transitions per side; medians over the rounds:"
    )
    rows = [
        ("floor (UPDATE + INSERT)", summary["floor_us"], 1.0),
        ("api begin_opt_in", summary["begin_opt_in_us"], summary["ratio_begin_opt_in"]),
        (
            "api cancel_opt_in",
            summary["cancel_opt_in_us"],
            summary["ratio_cancel_opt_in"],
        ),
        ("api overall", summary["api_us"], summary["ratio"]),
    ]
    print(f"  {'side':<24} {'us/transition':>14} {'x floor':>8}")
    for label, micros, ratio in rows:
        print(f"  {label:<24} {micros:>14.1f} {ratio:>8.2f}")
    verdict = "PASS" if summary["passed"] else "FAIL"
    print(
        f"{verdict}: API/floor {summary['ratio']:.2f}x, target <= {summary['target']}x"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--n",
        type=int,
        default=400,
        help="transitions per round on each side, an even number >= 2 (half are "
        "begin_opt_in, half cancel_opt_in); default 400",
    )
    parser.add_argument(
        "--rounds", type=int, default=11, help="timed rounds per side; default 11"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=TARGET_RATIO,
        help=f"maximum API/floor ratio for PASS; default {TARGET_RATIO}",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="directory for the temporary databases; default the system temp dir",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON instead of a table",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when the ratio exceeds the target",
    )
    args = parser.parse_args(argv)
    if args.n < 2 or args.n % 2:
        parser.error(f"invalid --n {args.n}: use an even number of at least 2")
    if args.rounds < 1:
        parser.error(f"invalid --rounds {args.rounds}: use at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="optin-bench-", dir=args.dir) as name:
        directory = Path(name)
        results, pragmas = run_benchmark(args.n, args.rounds, directory)
        summary = summarize(
            results, args.n, args.target, machine_facts(directory), pragmas
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    if args.check and not summary["passed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
