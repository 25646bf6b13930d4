"""Run each notebook headless with nbclient against a seeded temp database.

The kernel is the interpreter running pytest, through a kernelspec written to a
temp directory that JUPYTER_PATH puts first, so nothing needs to be installed
globally. Settings reach the kernel through the ``OPTIN_*`` environment
variables, as they would in Jupyter.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nbformat
import pytest
from conftest import make_settings
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from optin import Manager, Settings, State
from optin.config import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from optin.sandbox import SandboxServer
from optin.signin import sign_in
from tests.helpers import free_port

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "python3"
ACTOR = "notebook-test"
PASSWORD = "first password 1"
# Company id -> the state that seeding leaves it in.
SEEDED_STATES = {
    "CO-AUTH": State.AUTHORIZED,
    "CO-INV-1": State.INVALIDATED,
    "CO-INV-2": State.INVALIDATED,
    "CO-NEW": State.UNAUTHORIZED,
    "CO-OUT": State.OPTED_OUT,
    "CO-PEND": State.PENDING,
}


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a Jupyter data dir whose ``python3`` kernel runs ``sys.executable``.

    Listed first in JUPYTER_PATH, it hides any other ``python3`` kernelspec.
    """
    path = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(path / "kernels" / KERNEL_NAME)
    spec = (path / "kernels" / KERNEL_NAME / "kernel.json").read_text()
    assert sys.executable in spec
    return path


@pytest.fixture
def redirect_uri(sandbox_http: httpx.Client) -> str:
    """Register a callback URI on a free loopback port for the sandbox client."""
    uri = f"http://127.0.0.1:{free_port()}/callback"
    body = {
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "redirect_uris": [uri],
    }
    sandbox_http.post("/_sandbox/clients", json=body).raise_for_status()
    return uri


@pytest.fixture
def seeded_settings(
    tmp_path: Path, sandbox: SandboxServer, redirect_uri: str
) -> Settings:
    return make_settings(tmp_path, sandbox.url, redirect_uri=redirect_uri)


@pytest.fixture
def links_csv(tmp_path: Path) -> Path:
    return tmp_path / "links.csv"


@pytest.fixture
def kernel_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    jupyter_path: Path,
    seeded_settings: Settings,
    links_csv: Path,
) -> None:
    """Point the kernel's settings at the temp database and the sandbox."""
    # An empty config file, so that a developer's own one cannot leak in.
    config = tmp_path / "config.toml"
    config.write_text("")
    values = {
        "JUPYTER_PATH": str(jupyter_path),
        "OPTIN_CONFIG": str(config),
        "OPTIN_ENV": "sandbox",
        "OPTIN_BASE_URL": seeded_settings.base_url,
        "OPTIN_REDIRECT_URI": seeded_settings.redirect_uri,
        "OPTIN_DB": str(seeded_settings.db_path),
        "OPTIN_KEY_FILE": str(seeded_settings.resolved_key_file),
        "OPTIN_TIMEOUT": "5",
        "OPTIN_ACTOR": ACTOR,
        "OPTIN_LINKS_CSV": str(links_csv),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OPTIN_AUDIT_COMPANY", raising=False)


def add_sandbox_user(http: httpx.Client, username: str) -> None:
    body = {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
    }
    http.post("/_sandbox/users", json=body).raise_for_status()


def authorize(manager: Manager, company_id: str, login: str) -> None:
    """Opt the company in through the sandbox's sign-in pages."""
    link = manager.begin_opt_in(company_id, actor=ACTOR, reason="seed")
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=5) as http:
        callback_url = sign_in(http, link.url, login, PASSWORD)
    result = manager.complete_opt_in(callback_url, actor=ACTOR)
    assert result.outcome == "authorized"


@pytest.fixture
def seeded(
    seeded_settings: Settings, sandbox_http: httpx.Client, kernel_env: None
) -> Iterator[Manager]:
    """Open a manager on a database with one or two companies in each state.

    The invalidated companies lose their grant the way production ones do:
    their UPS.com user changes the password, and the next refresh is rejected.
    """
    add_sandbox_user(sandbox_http, "stays")
    add_sandbox_user(sandbox_http, "changes")
    with Manager(seeded_settings) as manager:
        for company_id in SEEDED_STATES:
            manager.add_company(
                company_id,
                f"{company_id} Ltd",
                f"admin@{company_id.lower()}.example",
                actor=ACTOR,
            )
        authorize(manager, "CO-AUTH", "stays")
        authorize(manager, "CO-INV-1", "changes")
        authorize(manager, "CO-INV-2", "changes")
        manager.begin_opt_in("CO-PEND", actor=ACTOR)
        manager.begin_opt_in("CO-OUT", actor=ACTOR)
        manager.opt_out("CO-OUT", actor=ACTOR, confirm=True)
        password = {"password": "second password 2"}
        sandbox_http.post(
            "/_sandbox/users/changes/password", json=password
        ).raise_for_status()
        report = manager.refresh_all(actor=ACTOR, reason="seed sweep")
        assert sorted(report.invalidated) == ["CO-INV-1", "CO-INV-2"]
        assert state_map(manager) == SEEDED_STATES
        yield manager


def state_map(manager: Manager) -> dict[str, State]:
    return {company.id: company.state for company in manager.list_companies()}


def oauth_requests(http: httpx.Client) -> list[dict[str, Any]]:
    response = http.get("/_sandbox/requests")
    response.raise_for_status()
    records: list[dict[str, Any]] = response.json()
    return records


def run_notebook(name: str) -> nbformat.NotebookNode:
    """Execute a stored notebook in notebooks/ as Jupyter would.

    Raises CellExecutionError when a cell fails.
    """
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return notebook


def output_text(notebook: nbformat.NotebookNode) -> str:
    """Join every text, HTML and Markdown output of the notebook."""
    parts: list[str] = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            for mime in ("text/plain", "text/html", "text/markdown"):
                parts.append(data.get(mime, ""))
    return "\n".join(parts)


def widget_views(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize(
    "name", ["analyst_console.ipynb", "batch_reopt_in.ipynb", "audit.ipynb"]
)
def test_stored_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a cell has stored outputs"
            assert cell.execution_count is None, f"{name}: an execution count"


def test_console_changes_nothing(seeded: Manager, sandbox_http: httpx.Client) -> None:
    states = state_map(seeded)
    history = len(seeded.get_history())
    requests = oauth_requests(sandbox_http)

    notebook = run_notebook("analyst_console.ipynb")

    assert widget_views(notebook) >= 1
    assert state_map(seeded) == states
    assert len(seeded.get_history()) == history
    assert oauth_requests(sandbox_http) == requests


def test_batch_reopts_invalidated(seeded: Manager, sandbox_http: httpx.Client) -> None:
    before = state_map(seeded)
    invalidated = {
        company_id for company_id, state in before.items() if state == State.INVALIDATED
    }
    requests = oauth_requests(sandbox_http)

    notebook = run_notebook("batch_reopt_in.ipynb")

    after = state_map(seeded)
    expected = {
        company_id: State.PENDING if company_id in invalidated else state
        for company_id, state in before.items()
    }
    assert after == expected
    assert widget_views(notebook) == 1
    assert oauth_requests(sandbox_http) == requests
    text = output_text(notebook)
    assert "<td>seed sweep" in text
    assert "Started 2 re-opt-ins, and 0 failed." in text
    for company_id in invalidated:
        latest = seeded.get_history(company_id, newest_first=True)[0]
        assert latest.trigger == "request_authorization"
        assert latest.actor == ACTOR


def test_batch_writes_links_csv(seeded: Manager, links_csv: Path) -> None:
    invalidated = {c.id for c in seeded.list_companies(State.INVALIDATED)}

    run_notebook("batch_reopt_in.ipynb")

    with links_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["company_id"] for row in rows} == invalidated
    assert len(rows) == len(invalidated)
    assert links_csv.stat().st_mode & 0o777 == 0o600
    sandbox = urlsplit(seeded.settings.base_url).netloc
    for row in rows:
        company = seeded.get_company(row["company_id"])
        assert row["name"] == company.name
        assert row["admin_email"] == company.admin_email
        assert urlsplit(row["link"]).netloc == sandbox
        assert "state=" in row["link"]
        expires_at = datetime.fromisoformat(row["link_expires_at"])
        assert expires_at > datetime.now(UTC)


def test_batch_without_invalidated(
    seeded_settings: Settings,
    sandbox_http: httpx.Client,
    kernel_env: None,
    links_csv: Path,
) -> None:
    with Manager(seeded_settings) as manager:
        manager.add_company("CO-ONLY", "Only Ltd", actor=ACTOR)
        history = len(manager.get_history())

        notebook = run_notebook("batch_reopt_in.ipynb")

        assert state_map(manager) == {"CO-ONLY": State.UNAUTHORIZED}
        assert len(manager.get_history()) == history
    assert not links_csv.exists()
    assert "No company is invalidated" in output_text(notebook)
    assert widget_views(notebook) == 0


def test_audit_named_company(
    seeded: Manager,
    sandbox_http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPTIN_AUDIT_COMPANY", "CO-INV-1")
    history = len(seeded.get_history())
    requests = oauth_requests(sandbox_http)

    text = output_text(run_notebook("audit.ipynb"))

    triggers = [entry.trigger for entry in seeded.get_history("CO-INV-1")]
    assert triggers == ["add", "request_authorization", "authorize", "invalidate"]
    for trigger in triggers:
        assert f"<td>{trigger}</td>" in text
    assert "seed sweep" in text
    assert "CO-INV-1 (CO-INV-1 Ltd): invalidated" in text
    assert len(seeded.get_history()) == history
    assert oauth_requests(sandbox_http) == requests


def test_audit_latest_company(seeded: Manager) -> None:
    latest = seeded.get_history()[-1].company_id
    company = seeded.get_company(latest)

    text = output_text(run_notebook("audit.ipynb"))

    assert f"{company.id} ({company.name}): {company.state.value}" in text


def test_audit_counts_and_diagram(seeded: Manager) -> None:
    text = output_text(run_notebook("audit.ipynb"))

    assert "stateDiagram" in text
    assert "invalidated (2)" in text
    assert "authorized (1)" in text
    for state, count in seeded.count_by_state().items():
        assert f"{state:<14}{count:>6}" in text
