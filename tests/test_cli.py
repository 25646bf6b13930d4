"""The optin command line, run in-process against the loopback sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import click
import httpx
import pytest
from click.testing import CliRunner

from optin import Manager, Settings
from optin.cli import main
from optin.signin import sign_in
from tests.helpers import authorize, create_user


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    main(list(args))


def cli_run(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    """Run ``optin`` through its real entry point (exit codes included)."""
    result = CliRunner().invoke(_entry, args, input=stdin)
    return result.exit_code, result.output


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("OPTIN_BASE_URL", settings.base_url)
    monkeypatch.setenv("OPTIN_DB", str(settings.db_path))
    monkeypatch.setenv("OPTIN_ACTOR", "cli-user")
    monkeypatch.delenv("OPTIN_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(settings.db_path.parent))
    return settings


def test_add_and_list_json(env: Settings) -> None:
    code, _ = cli_run(["add", "A-1", "Alpha", "--email", "a@alpha.example"])
    assert code == 0
    code, output = cli_run(["--json", "list"])
    assert code == 0
    rows = json.loads(output)
    assert [row["id"] for row in rows] == ["A-1"]
    assert rows[0]["state"] == "unauthorized"


def test_begin_complete_status(env: Settings, sandbox_http: httpx.Client) -> None:
    cli_run(["add", "A-1", "Alpha"])
    code, output = cli_run(["--json", "begin", "A-1", "--reason", "new"])
    assert code == 0
    url = json.loads(output)["url"]
    login = create_user(sandbox_http)
    callback = sign_in(sandbox_http, url, login, "pw-Start-1")
    code, output = cli_run(["complete", callback])
    assert code == 0, output
    assert "authorized" in output
    code, output = cli_run(["--json", "status", "A-1"])
    assert json.loads(output)["state"] == "authorized"
    with Manager(env) as manager:
        assert manager.get_history("A-1")[-1].actor == "cli-user"


@pytest.mark.parametrize("args", [["complete", "-"], ["complete"]])
def test_complete_from_stdin(
    env: Settings, sandbox_http: httpx.Client, args: list[str]
) -> None:
    cli_run(["add", "A-1", "Alpha"])
    _, output = cli_run(["--json", "begin", "A-1"])
    login = create_user(sandbox_http)
    callback = sign_in(sandbox_http, json.loads(output)["url"], login, "pw-Start-1")

    code, output = cli_run(args, stdin=callback + "\n")

    assert code == 0, output
    assert "company A-1 is authorized" in output
    with Manager(env) as manager:
        assert manager.get_company("A-1").state == "authorized"


def test_complete_empty_stdin(env: Settings) -> None:
    code, output = cli_run(["complete", "-"], stdin="\n")
    assert code == 2
    assert "missing callback URL: standard input is empty" in output


def test_invalid_transition_exit_one(env: Settings) -> None:
    cli_run(["add", "A-1", "Alpha"])
    code, output = cli_run(["refresh", "A-1"])
    assert code == 1
    assert "cannot refresh company_id='A-1'" in output


def test_unknown_company_exit_one(env: Settings) -> None:
    cli_run(["add", "A-1", "Alpha"])
    code, output = cli_run(["status", "NOPE"])
    assert code == 1
    assert "'NOPE' not found" in output


def test_opt_out_without_yes(env: Settings) -> None:
    cli_run(["add", "A-1", "Alpha"])
    cli_run(["begin", "A-1"])
    code, output = cli_run(["opt-out", "A-1"])
    assert code == 1
    assert "--yes" in output
    code, _ = cli_run(["opt-out", "A-1", "--yes"])
    assert code == 0


def test_forged_callback_exit_one(env: Settings) -> None:
    cli_run(["add", "A-1", "Alpha"])
    code, output = cli_run(
        ["complete", "http://127.0.0.1:8766/callback?code=x&state=y"]
    )
    assert code == 1
    assert "no authorization link has this callback's state" in output


def test_import_and_counts(env: Settings, tmp_path: Path) -> None:
    source = tmp_path / "c.csv"
    source.write_text("id,name,admin_email\nA,Alpha,a@a.example\n", encoding="utf-8")
    code, output = cli_run(["import", str(source)])
    assert code == 0
    assert "added 1" in output
    code, output = cli_run(["--json", "counts"])
    assert json.loads(output)["unauthorized"] == 1


def test_production_without_credentials(
    env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTIN_ENV", "production")
    code, output = cli_run(["list"])
    assert code == 3
    assert "OPTIN_CLIENT_ID" in output


def test_unreachable_ups_exit_five(
    env: Settings, monkeypatch: pytest.MonkeyPatch, sandbox_http: httpx.Client
) -> None:
    cli_run(["add", "A-1", "Alpha"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
    # Port 9 on loopback: nothing listens, so the connection is refused.
    monkeypatch.setenv("OPTIN_BASE_URL", "http://127.0.0.1:9")
    code, output = cli_run(["refresh", "A-1"])
    assert code == 5
    assert "stored tokens are kept" in output


def test_sandbox_users_from_csv(tmp_path: Path) -> None:
    from optin.local import sandbox_users
    from optin.sandbox import start_sandbox
    from optin.sandbox.app import SandboxSettings

    source = tmp_path / "c.csv"
    source.write_text(
        "id,name,admin_email\nA,Alpha,a@a.example\nB,Beta,a@a.example\n",
        encoding="utf-8",
    )
    users = sandbox_users(source, "pw")
    assert users == [("a-1", "a@a.example", "pw")]
    server = start_sandbox(port=0, settings=SandboxSettings(users=users))
    try:
        with httpx.Client(base_url=server.url) as http:
            http.post("/_sandbox/reset").raise_for_status()
            taken = http.post(
                "/_sandbox/users",
                json={"username": "a-1", "email": "x@a.example", "password": "p"},
            )
        assert taken.status_code == 409
    finally:
        server.stop()


def test_begin_all_writes_links(
    env: Settings, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    cli_run(["add", "A-1", "Alpha", "--email", "a@alpha.example"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
        manager.record_password_change("A-1", actor="ana")
    target = tmp_path / "links.csv"
    code, _ = cli_run(["begin-all", "--links-csv", str(target)])
    assert code == 0
    rows = target.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "company_id,name,admin_email,link,link_expires_at"
    assert rows[1].startswith("A-1,Alpha,a@alpha.example,http://127.0.0.1:")
    assert target.stat().st_mode & 0o777 == 0o600


def test_begin_all_prints_links(env: Settings, sandbox_http: httpx.Client) -> None:
    cli_run(["add", "A-1", "Alpha"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
        manager.record_password_change("A-1", actor="ana")
    code, output = cli_run(["--json", "begin-all"])
    assert code == 0
    started = json.loads(output)["started"]
    assert started[0]["company_id"] == "A-1"
    assert started[0]["url"].startswith(env.base_url)


def test_begin_all_bad_folder_changes_nothing(
    env: Settings, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    cli_run(["add", "A-1", "Alpha"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
        manager.record_password_change("A-1", actor="ana")
    target = tmp_path / "missing" / "links.csv"
    code, output = cli_run(["begin-all", "--links-csv", str(target)])
    assert code == 2
    assert "does not exist" in output
    with Manager(env) as manager:
        assert manager.get_company("A-1").state.value == "invalidated"


def test_list_unknown_state_exit_two(env: Settings) -> None:
    cli_run(["add", "A-1", "Alpha"])
    code, output = cli_run(["list", "--state", "bogus"])
    assert code == 2
    assert "invalidated" in output


def test_missing_database_not_created(env: Settings, tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    code, output = cli_run(["--db", str(typo), "counts"])
    assert code == 6
    assert "database not found" in output
    assert not typo.exists()


def test_sweep_stopped_by_client_exit_three(
    env: Settings, sandbox_http: httpx.Client
) -> None:
    cli_run(["add", "A-1", "Alpha"])
    cli_run(["add", "B-2", "Beta"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
        authorize(manager, sandbox_http, "B-2")
    sandbox_http.post(
        "/_sandbox/faults", json={"endpoint": "refresh", "status": 401, "count": 1}
    ).raise_for_status()
    code, output = cli_run(["refresh-all"])
    assert code == 3
    assert "stopped early: UPS rejected the client" in output


def test_opt_out_json_has_note(env: Settings, sandbox_http: httpx.Client) -> None:
    cli_run(["add", "A-1", "Alpha"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
    code, output = cli_run(["--json", "opt-out", "A-1", "--yes"])
    assert code == 0
    assert "UPS has no revoke endpoint" in json.loads(output)["note"]


def test_write_readme_without_markers(env: Settings, tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n", encoding="utf-8")
    code, output = cli_run(["diagram", "--write-readme", str(page)])
    assert code == 2
    assert "no lifecycle block" in output


def test_begin_all_unwritable_file(
    env: Settings, sandbox_http: httpx.Client, tmp_path: Path
) -> None:
    cli_run(["add", "A-1", "Alpha"])
    with Manager(env) as manager:
        authorize(manager, sandbox_http, "A-1")
        manager.record_password_change("A-1", actor="ana")
    # procfs files reject writes even from root, unlike a chmod 400 file.
    target = Path("/proc/version")
    code, output = cli_run(["begin-all", "--links-csv", str(target)])
    assert code == 2
    assert "cannot write" in output
    with Manager(env) as manager:
        assert manager.get_company("A-1").state.value == "invalidated"


def test_config_file_unknown_key(
    env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[optin]\nenv = "production"\n', encoding="utf-8")
    monkeypatch.setenv("OPTIN_CONFIG", str(config))
    code, output = cli_run(["counts"])
    assert code == 3
    assert "unknown keys in config file" in output
    assert "env" in output
