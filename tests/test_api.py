"""The Manager facade against a real SQLite file and the loopback sandbox."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from optin import (
    CallbackError,
    CompanyExists,
    CompanyNotFound,
    ConfigurationError,
    ConfirmationRequired,
    InvalidTransition,
    Manager,
    Settings,
    State,
    StoreError,
    TransientError,
    UsageError,
)
from tests.helpers import authorize, callback_for, create_user

CSV = "id,name,admin_email\nA-1,Alpha,a@alpha.example\nB-2,Beta,b@beta.example\n"


def test_add_company_starts_unauthorized(manager: Manager) -> None:
    company = manager.add_company("A-1", "Alpha", "a@alpha.example", actor="ana")
    assert company.state is State.UNAUTHORIZED
    assert company.version == 0
    assert manager.get_history("A-1")[0].trigger == "add"


def test_add_company_twice_rejected(manager: Manager) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    with pytest.raises(CompanyExists, match="'A-1' already exists"):
        manager.add_company("A-1", "Alpha again", actor="ana")


def test_add_company_blank_id_rejected(manager: Manager) -> None:
    with pytest.raises(UsageError, match="invalid company_id"):
        manager.add_company(" A-1", "Alpha", actor="ana")


def test_import_csv_skips_existing(manager: Manager, tmp_path: Path) -> None:
    source = tmp_path / "companies.csv"
    source.write_text(CSV, encoding="utf-8")
    assert manager.import_companies(source, actor="ana") == 2
    assert manager.import_companies(source, actor="ana") == 0
    assert [c.id for c in manager.list_companies()] == ["A-1", "B-2"]


def test_import_row_without_name(manager: Manager) -> None:
    with pytest.raises(UsageError, match="row 1 lacks id or name"):
        manager.import_companies([{"id": "X", "name": ""}], actor="ana")


def test_unknown_company_named(manager: Manager) -> None:
    with pytest.raises(CompanyNotFound, match="company_id='NOPE' not found"):
        manager.begin_opt_in("NOPE", actor="ana")


def test_full_opt_in(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    result = authorize(manager, sandbox_http, "A-1")
    assert result.outcome == "authorized"
    company = manager.get_company("A-1")
    assert company.state is State.AUTHORIZED
    assert company.access_expires_at is not None
    triggers = [entry.trigger for entry in manager.get_history("A-1")]
    assert triggers == ["add", "request_authorization", "authorize"]


def test_refresh_rotates_tokens(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    before = manager.store.get_grant("A-1")
    manager.refresh("A-1", actor="job", reason="nightly")
    after = manager.store.get_grant("A-1")
    assert before is not None and after is not None
    assert after.refresh_token != before.refresh_token
    assert manager.get_history("A-1")[-1].reason == "nightly"


def test_invalid_trigger_changes_nothing(manager: Manager) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    with pytest.raises(InvalidTransition) as caught:
        manager.refresh("A-1", actor="job")
    message = str(caught.value)
    assert "company_id='A-1'" in message
    assert "'unauthorized'" in message
    assert "request_authorization" in message
    assert manager.get_company("A-1").version == 0
    assert len(manager.get_history("A-1")) == 1


def test_opt_out_needs_confirmation(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    with pytest.raises(ConfirmationRequired, match="confirm=True"):
        manager.opt_out("A-1", actor="ana")
    assert manager.get_company("A-1").state is State.AUTHORIZED
    manager.opt_out("A-1", actor="ana", confirm=True)
    assert manager.get_company("A-1").state is State.OPTED_OUT
    assert manager.store.count_grants("A-1") == 0


def test_opt_out_records_token_expiry(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    expires = manager.get_company("A-1").access_expires_at
    manager.opt_out("A-1", actor="ana", confirm=True)
    details = manager.get_history("A-1")[-1].details
    assert details["access_token_valid_at_ups_until"] == expires


def test_password_change_sweep(manager: Manager, sandbox_http: httpx.Client) -> None:
    for company_id in ("A-1", "B-2", "C-3"):
        manager.add_company(company_id, company_id, actor="ana")
    logins = {cid: create_user(sandbox_http) for cid in ("A-1", "B-2", "C-3")}
    for company_id, login in logins.items():
        authorize(manager, sandbox_http, company_id, login)
    sandbox_http.post(
        f"/_sandbox/users/{logins['B-2']}/password", json={"password": "new-Pw-2"}
    ).raise_for_status()
    report = manager.refresh_all(actor="job")
    assert report.invalidated == ["B-2"]
    assert sorted(report.refreshed) == ["A-1", "C-3"]
    assert manager.get_company("B-2").state is State.INVALIDATED
    assert manager.store.count_grants("B-2") == 0


def test_reopt_in_after_invalidation(
    manager: Manager, sandbox_http: httpx.Client
) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    manager.record_password_change("A-1", actor="ana", reason="admin called")
    links, failed = manager.begin_opt_in_all(State.INVALIDATED, actor="job")
    assert [link.company_id for link in links] == ["A-1"]
    assert failed == {}
    assert manager.get_company("A-1").state is State.PENDING


def test_cancel_returns_to_origin(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    manager.record_password_change("A-1", actor="ana")
    manager.begin_opt_in("A-1", actor="ana")
    manager.begin_opt_in("A-1", actor="ana")
    company = manager.cancel_opt_in("A-1", actor="ana")
    assert company.state is State.INVALIDATED


def test_list_filters_and_counts(manager: Manager) -> None:
    manager.add_company("A-1", "Alpha Freight", actor="ana")
    manager.add_company("B-2", "Beta Books", actor="ana")
    manager.begin_opt_in("B-2", actor="ana")
    assert [c.id for c in manager.list_companies(State.PENDING)] == ["B-2"]
    assert [c.id for c in manager.list_companies(search="freight")] == ["A-1"]
    counts = manager.count_by_state()
    assert counts["pending"] == 1
    assert counts["unauthorized"] == 1
    assert counts["authorized"] == 0


def test_tokens_encrypted_at_rest(
    manager: Manager, sandbox_http: httpx.Client, settings: Settings
) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    authorize(manager, sandbox_http, "A-1")
    grant = manager.store.get_grant("A-1")
    assert grant is not None
    manager.close()
    raw = b"".join(
        path.read_bytes()
        for path in settings.db_path.parent.iterdir()
        if path.name.startswith(settings.db_path.name)
    )
    assert grant.access_token.reveal().encode() not in raw
    assert grant.refresh_token.reveal().encode() not in raw


def test_key_file_owner_only(manager: Manager, settings: Settings) -> None:
    mode = settings.resolved_key_file.stat().st_mode & 0o777
    assert mode == 0o600


def test_wrong_key_detected(settings: Settings, tmp_path: Path) -> None:
    Manager(settings).close()
    other_key = tmp_path / "other.key"
    other_key.write_bytes(Fernet.generate_key())
    other_key.chmod(0o600)
    other = Settings.build({"db_path": settings.db_path, "key_file": other_key})
    with pytest.raises(ConfigurationError, match="token key does not match"):
        Manager(other)


def test_missing_key_not_recreated(settings: Settings, tmp_path: Path) -> None:
    Manager(settings).close()
    missing = tmp_path / "missing.key"
    other = Settings.build({"db_path": settings.db_path, "key_file": missing})
    with pytest.raises(ConfigurationError, match="token key file not found"):
        Manager(other)
    assert not missing.exists()


def test_missing_database_when_not_creating(tmp_path: Path) -> None:
    settings = Settings.build({"db_path": tmp_path / "typo.db"})
    with pytest.raises(StoreError, match="database not found"):
        Manager(settings, create=False)
    assert not (tmp_path / "typo.db").exists()
    assert not (tmp_path / "typo.key").exists()


def test_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are not SQLite pages\n" * 200, encoding="utf-8")
    (tmp_path / "notes.key").write_bytes(Fernet.generate_key())
    (tmp_path / "notes.key").chmod(0o600)
    with pytest.raises(StoreError, match="cannot open database"):
        Manager(Settings.build({"db_path": bogus}))


def test_database_bound_to_client(settings: Settings) -> None:
    Manager(settings).close()
    other = Settings.build(
        {
            "environment": "cie",
            "base_url": "http://127.0.0.1:9",
            "client_id": "another-app",
            "client_secret": "x",
            "redirect_uri": "https://app.example/callback",
            "db_path": settings.db_path,
        }
    )
    with pytest.raises(ConfigurationError, match="belongs to environment='sandbox'"):
        Manager(other)


def test_history_is_append_only(manager: Manager) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    for statement in ("UPDATE history SET actor = 'x'", "DELETE FROM history"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            manager.store.conn.execute(statement)
    assert manager.get_history("A-1")[0].actor == "ana"


def test_migrations_recorded(manager: Manager) -> None:
    rows = manager.store.conn.execute("SELECT name FROM _migrations").fetchall()
    assert [row[0] for row in rows] == ["001_initial", "002_pending_claimed_at"]
    assert manager.store.migrate() == []


def test_repr_hides_secrets(manager: Manager, sandbox_http: httpx.Client) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    link = manager.begin_opt_in("A-1", actor="ana")
    assert "state=" not in repr(link)
    assert "sandbox-secret" not in repr(manager.settings)
    assert "sandbox-secret" not in repr(manager.ups)


def test_interrupted_exchange_closes_link(
    settings: Settings, sandbox_http: httpx.Client
) -> None:
    """A process killed mid-exchange leaves the link claimed; later it fails."""
    offset = timedelta()
    with Manager(settings, clock=lambda: datetime.now(UTC) + offset) as manager:
        manager.add_company("A-1", "Alpha", actor="ana")
        url = callback_for(manager, sandbox_http, "A-1", create_user(sandbox_http))
        pending = manager.store.get_pending(url.split("state=")[1].split("&")[0])
        assert pending is not None
        # Stand-in for the killed process: claim the link as the exchange does.
        with manager.store.immediate():
            manager.store.set_pending_status(pending.state_hash, "exchanging", "open")
        with pytest.raises(TransientError, match="being completed"):
            manager.complete_opt_in(url, actor="ana")
        offset = timedelta(minutes=5)
        with pytest.raises(CallbackError, match="interrupted"):
            manager.complete_opt_in(url, actor="ana")
        assert manager.get_company("A-1").state is State.PENDING
        link = manager.begin_opt_in("A-1", actor="ana")
        assert link.company_id == "A-1"


def test_import_csv_with_bom(manager: Manager, tmp_path: Path) -> None:
    source = tmp_path / "excel.csv"
    source.write_text(CSV, encoding="utf-8-sig")
    assert manager.import_companies(source, actor="ana") == 2


def test_import_repeated_id_rejected(manager: Manager) -> None:
    rows = [{"id": "D-1", "name": "One"}, {"id": "D-1", "name": "Two"}]
    with pytest.raises(UsageError, match="row 2 repeats id 'D-1' of row 1"):
        manager.import_companies(rows, actor="ana")
    assert manager.list_companies() == []


def test_import_not_utf8(manager: Manager, tmp_path: Path) -> None:
    source = tmp_path / "latin.csv"
    source.write_bytes("id,name\nA,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8 text"):
        manager.import_companies(source, actor="ana")


def test_add_company_needs_name(manager: Manager) -> None:
    with pytest.raises(UsageError, match="needs a non-empty name"):
        manager.add_company("OK-1", " ", actor="ana")


def test_list_unknown_state(manager: Manager) -> None:
    with pytest.raises(UsageError, match="invalid state='bogus'; use one of"):
        manager.list_companies("bogus")


def test_search_wildcards_literal(manager: Manager) -> None:
    manager.add_company("P-1", "100% Cotton", actor="ana")
    manager.add_company("P-2", "1000 Shirts", actor="ana")
    manager.add_company("U-1", "snake_case Ltd", actor="ana")
    manager.add_company("U-2", "snakeXcase Ltd", actor="ana")
    assert [c.id for c in manager.list_companies(search="100%")] == ["P-1"]
    assert [c.id for c in manager.list_companies(search="e_c")] == ["U-1"]


def test_company_for_callback(manager: Manager) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    link = manager.begin_opt_in("A-1", actor="ana")
    state = link.url.split("state=")[1].split("&")[0]
    callback = f"http://127.0.0.1:8766/callback?code=x&state={state}"
    assert manager.company_for_callback(callback) == "A-1"
    assert manager.company_for_callback(callback.replace(state, "forged")) is None


@pytest.mark.parametrize("company_id", ["CO\n1", "C\x1b[31mRED", "A\x7f"])
def test_control_characters_in_id(manager: Manager, company_id: str) -> None:
    with pytest.raises(UsageError, match="printable characters"):
        manager.add_company(company_id, "Name", actor="ana")


def test_control_characters_in_name(manager: Manager) -> None:
    with pytest.raises(UsageError, match="printable characters"):
        manager.add_company("A-1", "Alpha\nB-2,Fake row", actor="ana")
    with pytest.raises(UsageError, match="row 1 has an invalid name"):
        manager.import_companies([{"id": "A-1", "name": "   "}], actor="ana")


@pytest.mark.parametrize("actor", ["", "   ", " ana"])
def test_blank_actor_rejected(manager: Manager, actor: str) -> None:
    manager.add_company("A-1", "Alpha", actor="ana")
    with pytest.raises(UsageError, match="invalid actor"):
        manager.begin_opt_in("A-1", actor=actor)
    assert manager.get_company("A-1").state is State.UNAUTHORIZED


def test_folder_as_database(tmp_path: Path) -> None:
    folder = tmp_path / "dir.db"
    folder.mkdir()
    (tmp_path / "dir.key").write_bytes(Fernet.generate_key())
    (tmp_path / "dir.key").chmod(0o600)
    with pytest.raises(StoreError, match="cannot open database"):
        Manager(Settings.build({"db_path": folder}))
