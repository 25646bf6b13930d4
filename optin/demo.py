"""The demo: the whole opt-in lifecycle for every company, against the sandbox.

It starts the UPS sandbox and the callback receiver on free loopback ports in
this process and imports the companies. Every admin then signs in through the
sandbox's pages over HTTP as a browser would. The demo refreshes everyone and
changes three admins' UPS.com passwords, so the next sweep invalidates exactly
those three. It re-opts them in, opts one company out, and prints the final
table and one company's history. The database file stays for inspection.
"""

from __future__ import annotations

import csv
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from optin.api import Manager
from optin.cli import company_table, history_table
from optin.config import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, Settings
from optin.errors import OptinError
from optin.lifecycle import State
from optin.receiver import create_receiver
from optin.serving import ThreadedServer
from optin.signin import sign_in

ACTOR = "demo"
# Meta entry that marks a database the demo made and may replace.
MARKER = "created_by"
MARKER_VALUE = "optin demo"
PASSWORD_CHANGERS = 3


class DemoFailure(RuntimeError):
    pass


def run_demo(
    db_path: Path,
    companies_csv: Path,
    echo: Callable[[str], None] = print,
) -> int:
    """Run the demo; return 0 when every step did what it should, else 1.

    An existing file at ``db_path`` is replaced only if an earlier demo made
    it, so the demo never deletes an operator's database.
    """
    from optin.sandbox import start_sandbox

    refusal = _refuse_to_replace(db_path)
    if refusal is not None:
        echo(refusal)
        return 1
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    sandbox = start_sandbox(port=0)
    try:
        return _run(sandbox.url, db_path, companies_csv, echo)
    except DemoFailure as exc:
        echo(f"demo failed: {exc}")
        return 1
    finally:
        sandbox.stop()


def _refuse_to_replace(db_path: Path) -> str | None:
    """Return why ``db_path`` must not be replaced, or None if it may be."""
    if not db_path.exists():
        return None
    try:
        with Manager(Settings.build({"db_path": db_path}), create=False) as manager:
            made_by = manager.store.get_meta(MARKER)
    except OptinError as exc:
        made_by = None
        detail = f" ({exc})"
    else:
        detail = ""
    if made_by == MARKER_VALUE:
        return None
    return (
        f"demo not run: {db_path} exists and was not made by the demo{detail}. "
        "Move it away, or pass --db with another path"
    )


def _run(
    sandbox_url: str, db_path: Path, companies_csv: Path, echo: Callable[[str], None]
) -> int:
    # The receiver serves the default redirect path; the exchange itself uses
    # the redirect URI stored with each link, so its port can be chosen later.
    receiver_settings = Settings.build({"base_url": sandbox_url, "db_path": db_path})
    with Manager(receiver_settings) as receiver_manager:
        server = ThreadedServer(create_receiver(receiver_manager))
        redirect_uri = f"{server.url}{urlsplit(receiver_settings.redirect_uri).path}"
        settings = Settings.build(
            {"base_url": sandbox_url, "db_path": db_path, "redirect_uri": redirect_uri}
        )
        with server, httpx.Client(base_url=sandbox_url, follow_redirects=False) as http:
            _register_client(http, redirect_uri)
            with Manager(settings) as manager:
                manager.store.set_meta(MARKER, MARKER_VALUE)
                _lifecycle(manager, http, companies_csv, echo)
    echo(f"\ndatabase left at {db_path}")
    return 0


def _register_client(http: httpx.Client, redirect_uri: str) -> None:
    response = http.post(
        "/_sandbox/clients",
        json={
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
            "name": "optin demo",
        },
    )
    response.raise_for_status()


def _lifecycle(
    manager: Manager,
    http: httpx.Client,
    companies_csv: Path,
    echo: Callable[[str], None],
) -> None:
    added = manager.import_companies(companies_csv, actor=ACTOR, reason="demo import")
    admins = _create_admins(http, companies_csv)
    echo(f"imported {added} companies; {len(admins)} admins exist at the sandbox")

    for company in manager.list_companies():
        _opt_in(manager, http, company.id, admins[company.id])
    _expect_all(manager, State.AUTHORIZED, "after the first opt-ins")
    echo(f"opted in {len(admins)} companies through the sign-in pages")

    report = manager.refresh_all(actor=ACTOR, reason="demo refresh")
    if len(report.refreshed) != len(admins):
        raise DemoFailure(
            f"refresh sweep refreshed {len(report.refreshed)} of {len(admins)}"
        )
    echo(f"refreshed {len(report.refreshed)} companies")

    changers = sorted(admins)[1 : 1 + PASSWORD_CHANGERS * 7 : 7]
    for company_id in changers:
        login, _ = admins[company_id]
        new_password = secrets.token_urlsafe(12)
        http.post(f"/_sandbox/users/{login}/password", json={"password": new_password})
        admins[company_id] = (login, new_password)
    echo(f"admins of {', '.join(changers)} changed their UPS.com password")

    report = manager.refresh_all(actor=ACTOR, reason="demo sweep")
    if sorted(report.invalidated) != changers:
        raise DemoFailure(
            f"sweep invalidated {report.invalidated}, expected {changers}"
        )
    echo(f"sweep marked invalidated: {', '.join(report.invalidated)}")

    links, failed = manager.begin_opt_in_all(
        State.INVALIDATED, actor=ACTOR, reason="re-opt-in after password change"
    )
    if failed:
        raise DemoFailure(f"re-opt-in failed to start for {failed}")
    for link in links:
        _complete(manager, http, link.url, admins[link.company_id])
    _expect_all(manager, State.AUTHORIZED, "after the re-opt-ins")
    echo(f"re-opted in {', '.join(link.company_id for link in links)}")

    leaving = sorted(admins)[-1]
    manager.opt_out(leaving, actor=ACTOR, reason="demo opt-out", confirm=True)
    echo(
        f"opted out {leaving}; UPS has no revoke endpoint, so its last access "
        "token lives until it expires"
    )

    echo("\nfinal state:\n" + company_table(manager.list_companies()))
    echo(
        f"\nhistory of {changers[0]}:\n"
        + history_table(manager.get_history(changers[0]))
    )


def _create_admins(
    http: httpx.Client, companies_csv: Path
) -> dict[str, tuple[str, str]]:
    """Create one sandbox UPS.com user per company; return id -> (login, password)."""
    admins: dict[str, tuple[str, str]] = {}
    with companies_csv.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle)):
            email = row["admin_email"]
            username = email.split("@")[0].replace(".", "_") + f"_{number}"
            password = secrets.token_urlsafe(12)
            response = http.post(
                "/_sandbox/users",
                json={"username": username, "email": email, "password": password},
            )
            response.raise_for_status()
            # Half sign in with the email, half with the username, as admins do.
            admins[row["id"]] = (email if number % 2 else username, password)
    return admins


def _opt_in(
    manager: Manager, http: httpx.Client, company_id: str, admin: tuple[str, str]
) -> None:
    link = manager.begin_opt_in(company_id, actor=ACTOR, reason="demo opt-in")
    _complete(manager, http, link.url, admin)


def _complete(
    manager: Manager, http: httpx.Client, url: str, admin: tuple[str, str]
) -> None:
    login, password = admin
    callback_url = sign_in(http, url, login, password)
    # The browser follows the redirect to the callback receiver.
    landed = http.get(callback_url)
    if landed.status_code != 200:
        raise DemoFailure(
            f"callback receiver returned HTTP {landed.status_code}: {landed.text}"
        )


def _expect_all(manager: Manager, state: State, when: str) -> None:
    counts = manager.count_by_state()
    total = sum(counts.values())
    if counts[state.value] != total:
        raise DemoFailure(
            f"{when}: expected all {total} companies {state}, got {counts}"
        )
