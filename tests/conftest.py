"""Shared fixtures: a real UPS sandbox on loopback and managers on temp files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from optin import Manager, Settings
from optin.sandbox import SandboxServer, start_sandbox


@pytest.fixture(autouse=True)
def isolated_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Keep the developer's OPTIN_* variables and config file out of every test."""
    for name in list(os.environ):
        if name.startswith("OPTIN_"):
            monkeypatch.delenv(name)
    empty = tmp_path_factory.getbasetemp() / "empty-config.toml"
    empty.touch()
    monkeypatch.setenv("OPTIN_CONFIG", str(empty))


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    """One sandbox server for the whole run; tests reset it when they need to."""
    server = start_sandbox(port=0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sandbox_http(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, follow_redirects=False) as client:
        client.post("/_sandbox/reset").raise_for_status()
        yield client


def make_settings(tmp_path: Path, sandbox_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "environment": "sandbox",
        "base_url": sandbox_url,
        "db_path": tmp_path / "optin.db",
        "timeout": 5.0,
    }
    values.update(overrides)
    return Settings.build(values)


@pytest.fixture
def settings(
    tmp_path: Path, sandbox: SandboxServer, sandbox_http: httpx.Client
) -> Settings:
    return make_settings(tmp_path, sandbox.url)


@pytest.fixture
def manager(settings: Settings) -> Iterator[Manager]:
    with Manager(settings) as opened:
        yield opened
