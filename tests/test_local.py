"""Local sandbox set-up used by the notebooks and the sandbox command."""

from __future__ import annotations

from pathlib import Path

import httpx

from optin import Manager, Settings
from optin.local import ensure_sandbox, import_if_empty, sandbox_running
from optin.sandbox import SandboxServer
from tests.conftest import make_settings
from tests.helpers import free_port

COMPANIES = Path(__file__).resolve().parent.parent / "data" / "companies.csv"


def test_ensure_sandbox_reuses_running(tmp_path: Path, sandbox: SandboxServer) -> None:
    server, note = ensure_sandbox(make_settings(tmp_path, sandbox.url), COMPANIES)
    assert server is None
    assert "already runs" in note


def test_ensure_sandbox_starts_one(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert not sandbox_running(url, timeout=0.5)
    server, note = ensure_sandbox(make_settings(tmp_path, url), COMPANIES)
    try:
        assert server is not None
        assert sandbox_running(url)
        assert "25 UPS.com users" in note
        with httpx.Client(base_url=url) as http:
            taken = http.post(
                "/_sandbox/users",
                json={
                    "username": "x",
                    "email": "ana.admin@acme.example",
                    "password": "p",
                },
            )
        assert taken.status_code == 409
    finally:
        if server is not None:
            server.stop()


def test_ensure_sandbox_skips_production(tmp_path: Path) -> None:
    settings = Settings.build(
        {
            "environment": "production",
            "base_url": "http://127.0.0.1:9",
            "client_id": "id",
            "client_secret": "secret",
            "redirect_uri": "https://app.example/callback",
            "db_path": tmp_path / "optin.db",
        }
    )
    server, note = ensure_sandbox(settings, COMPANIES)
    assert server is None
    assert "no sandbox was started" in note


def test_import_if_empty_once(settings: Settings) -> None:
    with Manager(settings) as manager:
        assert import_if_empty(manager, "ana", COMPANIES) == 25
        assert import_if_empty(manager, "ana", COMPANIES) == 0
        assert len(manager.list_companies()) == 25
