"""Storing tokens that UPS just issued survives a briefly locked database."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import optin.store
from optin import DatabaseBusy, GrantRevoked, Manager, Settings, State, UPSTimeout
from optin.sandbox import SandboxServer
from optin.secret import Secret
from optin.ups import TokenSet
from tests.conftest import make_settings
from tests.helpers import authorize, callback_for, create_user


def hold_lock(path: str, seconds: float, taken: threading.Event) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    taken.set()
    time.sleep(seconds)
    connection.execute("ROLLBACK")
    connection.close()


def lock_after_refresh(manager: Manager, seconds: float) -> list[threading.Thread]:
    """Wrap the real UPS refresh so that another connection locks the file
    right after UPS rotated the pair, before optin stores it."""
    real_refresh = manager.ups.refresh
    holders: list[threading.Thread] = []

    def refresh_then_lock(token: Secret) -> TokenSet:
        tokens = real_refresh(token)
        taken = threading.Event()
        holder = threading.Thread(
            target=hold_lock, args=(str(manager.store.path), seconds, taken)
        )
        holder.start()
        taken.wait(5)
        holders.append(holder)
        return tokens

    manager.ups.refresh = refresh_then_lock  # type: ignore[method-assign]
    return holders


def test_refresh_retries_busy_store(
    settings: Settings,
    sandbox_http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(optin.store, "BUSY_TIMEOUT_MS", 200)
    with Manager(settings) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        authorize(manager, sandbox_http, "A-1")
        before = manager.store.get_grant("A-1")
        holders = lock_after_refresh(manager, 0.3)
        company = manager.refresh("A-1", actor="job")
        for holder in holders:
            holder.join()
        after = manager.store.get_grant("A-1")
    assert company.state is State.AUTHORIZED
    assert before is not None and after is not None
    assert after.refresh_token != before.refresh_token
    assert "database busy storing refresh tokens, retrying" in caplog.text


def test_refresh_lock_outlasts_retries(
    settings: Settings, sandbox_http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optin.store, "BUSY_TIMEOUT_MS", 100)
    with Manager(settings) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        authorize(manager, sandbox_http, "A-1")
        holders = lock_after_refresh(manager, 1.5)
        with pytest.raises(DatabaseBusy, match="stayed locked"):
            manager.refresh("A-1", actor="job")
        for holder in holders:
            holder.join()
        company = manager.get_company("A-1")
        history = manager.get_history("A-1")
    assert company.state is State.AUTHORIZED
    assert history[-1].trigger == "authorize"


def test_timeout_after_rotation_invalidates(
    tmp_path: Path, sandbox: SandboxServer, sandbox_http: httpx.Client
) -> None:
    """UPS rotates the pair although the client timed out, as a real server
    would; the kept token is then dead and the next refresh invalidates."""
    settings = make_settings(tmp_path, sandbox.url, timeout=0.5)
    with Manager(settings) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        authorize(manager, sandbox_http, "A-1")
        sandbox_http.post(
            "/_sandbox/faults", json={"endpoint": "refresh", "delay": 1.0, "count": 1}
        ).raise_for_status()
        with pytest.raises(UPSTimeout, match="stored tokens are kept"):
            manager.refresh("A-1", actor="job")
        assert manager.get_company("A-1").state is State.AUTHORIZED
        time.sleep(1.0)
        with pytest.raises(GrantRevoked):
            manager.refresh("A-1", actor="job")
        assert manager.get_company("A-1").state is State.INVALIDATED


def test_exchange_retries_busy_store(
    settings: Settings,
    sandbox_http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(optin.store, "BUSY_TIMEOUT_MS", 200)
    with Manager(settings) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        callback = callback_for(manager, sandbox_http, "A-1", create_user(sandbox_http))
        real_exchange = manager.ups.exchange_code
        holders: list[threading.Thread] = []

        def exchange_then_lock(*args: Any) -> TokenSet:
            tokens = real_exchange(*args)
            taken = threading.Event()
            holder = threading.Thread(
                target=hold_lock, args=(str(manager.store.path), 0.3, taken)
            )
            holder.start()
            taken.wait(5)
            holders.append(holder)
            return tokens

        manager.ups.exchange_code = exchange_then_lock  # type: ignore[method-assign]
        result = manager.complete_opt_in(callback, actor="ana")
        for holder in holders:
            holder.join()
    assert result.outcome == "authorized"
    assert "database busy storing authorize tokens, retrying" in caplog.text
