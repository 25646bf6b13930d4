"""The analyst console, driven by clicking its buttons against the loopback sandbox."""

from __future__ import annotations

import dataclasses
import html
import re
import socket
import sqlite3
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import ipywidgets as widgets
import pytest

from optin import Manager, Settings, State
from optin.config import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_REDIRECT_URI
from optin.console import Console, open_console
from optin.console.app import MAX_ROWS
from optin.receiver import create_receiver
from optin.sandbox import SandboxServer
from optin.serving import ThreadedServer
from optin.signin import sign_in

ADMIN = {
    "username": "acme-admin",
    "email": "admin@acme.test",
    "password": "correct-horse-battery",
}
COMPANIES = [
    {"id": "ACME-01", "name": "Acme Corp", "admin_email": "admin@acme.test"},
    {"id": "GLOBEX-02", "name": "Globex", "admin_email": "it@globex.test"},
    {"id": "INITECH-03", "name": "Initech", "admin_email": ""},
]


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def companies(manager: Manager) -> None:
    manager.import_companies(COMPANIES, actor="test")


@pytest.fixture
def admin(sandbox_http: httpx.Client) -> dict[str, str]:
    sandbox_http.post("/_sandbox/users", json=ADMIN).raise_for_status()
    return ADMIN


def checked(console: Console) -> Iterator[Console]:
    """Yield the console, then fail the test if a handler raised unexpectedly."""
    yield console
    assert console.errors == [], f"handlers raised: {console.errors!r}"


@pytest.fixture
def console(manager: Manager, companies: None) -> Iterator[Console]:
    yield from checked(Console(manager, actor="ana"))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's config file and OPTIN_* variables out of Settings.load."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("OPTIN_CONFIG", "OPTIN_ENV", "OPTIN_CLIENT_ID", "OPTIN_DB"):
        monkeypatch.delenv(name, raising=False)


# -- helpers --------------------------------------------------------------------


def displayed_widgets(console: Console) -> list[Any]:
    """Return every widget displayed under the console's top-level box."""
    found: list[Any] = []
    pending = [console.widget]
    while pending:
        widget = pending.pop()
        found.append(widget)
        pending.extend(getattr(widget, "children", ()))
    return found


def is_shown(console: Console, widget: Any) -> bool:
    return any(widget is candidate for candidate in displayed_widgets(console))


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def message(console: Console) -> str:
    return text_of(console.output.value)


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append({name: value or "" for name, value in attrs})


def sign_in_anchor(console: Console) -> dict[str, str]:
    parser = _Anchors()
    parser.feed(console.link_html.value)
    links = [a for a in parser.anchors if a.get("class") == "optin-link"]
    assert len(links) == 1, console.link_html.value
    return links[0]


def start_opt_in(console: Console, company_id: str) -> str:
    """Select the company, click OAuth and Continue; return the sign-in URL."""
    console.company_select.value = company_id
    console.oauth_button.click()
    console.continue_button.click()
    return sign_in_anchor(console)["href"]


def admin_signs_in(authorization_url: str) -> str:
    """Sign in as the admin at the sandbox; return the callback URL it redirects to."""
    with httpx.Client(follow_redirects=False) as browser:
        return sign_in(browser, authorization_url, ADMIN["username"], ADMIN["password"])


def opt_in_by_pasting(console: Console, company_id: str) -> str:
    """Opt the company in through the console; return the callback URL used."""
    callback_url = admin_signs_in(start_opt_in(console, company_id))
    console.callback_box.value = callback_url
    console.complete_button.click()
    return callback_url


def opt_in_directly(manager: Manager, company_id: str) -> None:
    link = manager.begin_opt_in(company_id, actor="test")
    manager.complete_opt_in(admin_signs_in(link.url), actor="test")


def triggers(manager: Manager, company_id: str) -> list[str]:
    return [entry.trigger for entry in manager.get_history(company_id)]


def widget_texts(console: Console) -> list[str]:
    """Collect every string that any of the console's widgets holds."""
    candidates = displayed_widgets(console) + [
        value for value in vars(console).values() if isinstance(value, widgets.Widget)
    ]
    texts: list[str] = []
    for widget in candidates:
        for name in ("value", "description", "placeholder", "tooltip"):
            value = getattr(widget, name, None)
            if isinstance(value, str):
                texts.append(value)
        texts.extend(str(option) for option in getattr(widget, "options", ()))
        texts.extend(repr(output) for output in getattr(widget, "outputs", ()))
    texts.extend(text for _, text in console.messages)
    return texts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def register_redirect_uri(sandbox_http: httpx.Client, uri: str) -> None:
    client = {
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "redirect_uris": [SANDBOX_REDIRECT_URI, uri],
    }
    sandbox_http.post("/_sandbox/clients", json=client).raise_for_status()


def other_manager(settings: Settings) -> Manager:
    """Open a second Manager on the database, as the CLI in another process would."""
    return Manager(settings)


def add_fault(sandbox_http: httpx.Client, **fault: object) -> None:
    body = {"endpoint": "refresh", "count": 1, **fault}
    sandbox_http.post("/_sandbox/faults", json=body).raise_for_status()


# -- company list ---------------------------------------------------------------


def test_list_shows_every_company(console: Console) -> None:
    labels = [label for label, _ in console.company_select.options]
    assert labels == [
        "ACME-01 | Acme Corp",
        "GLOBEX-02 | Globex",
        "INITECH-03 | Initech",
    ]
    assert console.company_table.value.count('data-state="unauthorized"') == 3
    assert (
        'class="optin-badge optin-state optin-state-unauthorized"'
        in console.company_table.value
    )


def test_search_narrows_list(console: Console) -> None:
    console.search.value = "glob"
    assert [v for _, v in console.company_select.options] == ["GLOBEX-02"]
    assert "ACME-01" not in console.company_table.value


def test_search_matches_admin_email(console: Console) -> None:
    console.search.value = "acme.test"
    assert [v for _, v in console.company_select.options] == ["ACME-01"]


def test_state_filter_narrows_list(console: Console, manager: Manager) -> None:
    manager.begin_opt_in("GLOBEX-02", actor="test")
    console.state_filter.value = "pending"
    assert [v for _, v in console.company_select.options] == ["GLOBEX-02"]
    console.state_filter.value = "authorized"
    assert console.company_select.options == ()
    assert "No company matches" in console.company_table.value
    console.state_filter.value = "all"
    assert len(console.company_select.options) == 3


def test_state_filter_offers_all_and_each_state(console: Console) -> None:
    assert list(console.state_filter.options) == ["all", *(s.value for s in State)]


def test_filter_keeps_selected_panel(console: Console) -> None:
    console.company_select.value = "ACME-01"
    console.search.value = "globex"
    assert console.selected_id == "ACME-01"
    assert console.company_select.value is None
    assert "Acme Corp" in console.summary_html.value


def test_selecting_company_shows_panel(console: Console) -> None:
    assert is_shown(console, console.no_selection_html)
    console.company_select.value = "ACME-01"
    assert is_shown(console, console.panel)
    assert "Acme Corp" in console.summary_html.value
    assert 'data-state="unauthorized"' in console.badge_html.value


def test_search_treats_wildcards_literally(console: Console, manager: Manager) -> None:
    manager.add_company("PCT-1", "Save 100% now", "", actor="test")
    manager.add_company("UND_2", "Under score", "", actor="test")
    cases = {
        "%": ["PCT-1"],
        "100%": ["PCT-1"],
        "_": ["UND_2"],
        "d_2": ["UND_2"],
        "%_": [],
    }
    for search, expected in cases.items():
        console.search.value = search
        listed = [value for _, value in console.company_select.options]
        assert listed == expected, search


def test_html_in_company_name_is_escaped(console: Console, manager: Manager) -> None:
    manager.add_company("X<i>1", "<script>alert(1)</script> & Co", "", actor="test")
    console.search.value = "<script>"
    assert [value for _, value in console.company_select.options] == ["X<i>1"]
    console.company_select.value = "X<i>1"
    for fragment in (console.company_table.value, console.summary_html.value):
        assert "<script>" not in fragment
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in fragment
        assert "X&lt;i&gt;1" in fragment


def test_long_list_is_cut_with_note(console: Console, manager: Manager) -> None:
    extra = [
        {"id": f"BULK-{n:04d}", "name": f"Bulk {n}", "admin_email": ""}
        for n in range(MAX_ROWS + 20)
    ]
    manager.import_companies(extra, actor="test")
    console.reload()
    total = MAX_ROWS + 23
    assert len(console.company_select.options) == MAX_ROWS
    table = console.company_table.value
    note = f"Showing {MAX_ROWS} of {total} companies; narrow the search"
    assert note in text_of(table)
    assert table.index("optin-list-note") < table.index("<table")
    console.search.value = "BULK-0219"
    assert [value for _, value in console.company_select.options] == ["BULK-0219"]


def test_panel_comes_before_long_list(console: Console) -> None:
    children = list(console.widget.children)
    table_at = children.index(console.company_table_box)
    assert children.index(console.output) < table_at
    assert children.index(console.panel) < table_at
    assert console.company_table_box.children == (console.company_table,)
    assert console.company_table_box.layout.overflow == "auto"
    assert console.company_table_box.layout.max_height == "320px"


# -- actions follow the state machine ---------------------------------------------


def action_buttons(console: Console) -> set[str]:
    return {
        widget.description
        for widget in console.action_row.children
        if isinstance(widget, widgets.Button)
    }


def test_unauthorized_offers_oauth(console: Console) -> None:
    console.company_select.value = "ACME-01"
    assert action_buttons(console) == {"OAuth", "Check status"}


def test_pending_offers_oauth_cancel_opt_out(
    console: Console, manager: Manager
) -> None:
    manager.begin_opt_in("ACME-01", actor="test")
    console.company_select.value = "ACME-01"
    assert action_buttons(console) == {
        "OAuth",
        "Cancel opt-in",
        "Opt-Out",
        "Check status",
    }
    assert is_shown(console, console.callback_box)
    assert is_shown(console, console.complete_button)


def test_authorized_offers_refresh_and_badge(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    assert action_buttons(console) == {
        "Authorized",
        "Refresh",
        "Record password change",
        "Check status",
    }
    assert not is_shown(console, console.callback_box)


def test_opted_out_offers_oauth(console: Console, manager: Manager) -> None:
    manager.begin_opt_in("ACME-01", actor="test")
    manager.opt_out("ACME-01", actor="test", confirm=True)
    console.company_select.value = "ACME-01"
    assert action_buttons(console) == {"OAuth", "Check status"}


# -- opt-in -------------------------------------------------------------------------


def test_oauth_opens_dialog(console: Console, manager: Manager) -> None:
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    assert is_shown(console, console.dialog)
    assert is_shown(console, console.continue_button)
    assert is_shown(console, console.cancel_dialog_button)
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED


def test_continue_shows_link(
    console: Console, manager: Manager, sandbox: SandboxServer
) -> None:
    url = start_opt_in(console, "ACME-01")
    anchor = sign_in_anchor(console)
    assert anchor["target"] == "_blank"
    assert url.startswith(f"{sandbox.url}/security/v1/oauth/authorize?")
    assert not is_shown(console, console.dialog)
    assert manager.get_company("ACME-01").state == State.PENDING
    assert triggers(manager, "ACME-01") == ["add", "request_authorization"]
    assert manager.get_history("ACME-01")[-1].actor == "ana"
    assert "paste the address" in message(console)


def test_cancel_in_dialog_changes_nothing(console: Console, manager: Manager) -> None:
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    console.cancel_dialog_button.click()
    assert not is_shown(console, console.dialog)
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED
    assert triggers(manager, "ACME-01") == ["add"]
    assert "nothing changed" in message(console)


def test_opt_in_by_pasting_callback(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_by_pasting(console, "ACME-01")
    company = manager.get_company("ACME-01")
    assert company.state == State.AUTHORIZED
    assert is_shown(console, console.badge_button)
    assert console.badge_button.description == "Authorized"
    assert "is authorized" in message(console)
    assert console.callback_box.value == ""
    assert company.access_expires_at is not None
    assert company.access_expires_at[:10] in console.company_table.value


def test_opt_in_through_receiver(
    manager: Manager,
    companies: None,
    settings: Settings,
    sandbox_http: httpx.Client,
    admin: dict[str, str],
) -> None:
    # The receiver app reads only the path of its Manager's redirect URI, so
    # its port is known only once the server has bound a free one.
    with (
        Manager(settings) as receiver_manager,
        ThreadedServer(create_receiver(receiver_manager)) as server,
    ):
        redirect_uri = f"{server.url}/callback"
        register_redirect_uri(sandbox_http, redirect_uri)
        with_receiver = dataclasses.replace(settings, redirect_uri=redirect_uri)
        with Manager(with_receiver) as console_manager:
            console = Console(console_manager, "ana", receiver_url=redirect_uri)
            url = start_opt_in(console, "ACME-01")
            assert "callback receiver" in message(console)

            callback_url = admin_signs_in(url)
            assert callback_url.startswith(redirect_uri)
            landing = httpx.get(callback_url)
            assert landing.status_code == 200
            assert not is_shown(console, console.badge_button)

            console.status_button.click()
            assert is_shown(console, console.badge_button)
            assert "is authorized" in message(console)
            assert console.errors == []
    assert manager.get_company("ACME-01").state == State.AUTHORIZED


def test_complete_needs_pasted_url(console: Console, manager: Manager) -> None:
    manager.begin_opt_in("ACME-01", actor="test")
    console.company_select.value = "ACME-01"
    console.complete_button.click()
    assert "Paste the address" in message(console)
    assert manager.get_company("ACME-01").state == State.PENDING


def test_complete_with_unknown_state(console: Console, manager: Manager) -> None:
    manager.begin_opt_in("ACME-01", actor="test")
    console.company_select.value = "ACME-01"
    console.callback_box.value = "http://127.0.0.1:8766/callback?state=forged&code=abc"
    console.complete_button.click()
    text = message(console)
    assert "Complete failed for Acme Corp (ACME-01)" in text
    assert "begin a new opt-in" in text
    assert console.callback_box.value == ""


def test_cancel_opt_in_returns_to_origin(console: Console, manager: Manager) -> None:
    start_opt_in(console, "ACME-01")
    console.cancel_opt_in_button.click()
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED
    assert "no longer works" in message(console)
    assert not is_shown(console, console.link_html)


def test_link_made_elsewhere_is_not_shown(console: Console, manager: Manager) -> None:
    start_opt_in(console, "ACME-01")
    manager.begin_opt_in("ACME-01", actor="batch")
    console.status_button.click()
    assert 'class="optin-link"' not in console.link_html.value
    assert "Click OAuth to create a new link" in text_of(console.link_html.value)


def test_second_oauth_replaces_link(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    # The second Continue comes within the repeat window, but it belongs to a
    # newly opened dialog, so it must run.
    assert console.repeat_window >= 1.0
    first_url = start_opt_in(console, "ACME-01")
    console.oauth_button.click()
    assert "earlier sign-in link stops working" in text_of(console.dialog_text.value)
    console.continue_button.click()
    second_url = sign_in_anchor(console)["href"]
    assert second_url != first_url
    assert triggers(manager, "ACME-01").count("request_authorization") == 2
    assert "The earlier sign-in link no longer works" in message(console)
    assert not is_shown(console, console.dialog)

    console.callback_box.value = admin_signs_in(first_url)
    console.complete_button.click()
    assert "was replaced by a newer one" in message(console)
    assert manager.get_company("ACME-01").state == State.PENDING


def test_access_denied_callback_cancels(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    url = start_opt_in(console, "ACME-01")
    with httpx.Client(follow_redirects=False) as browser:
        denied = sign_in(browser, url, ADMIN["username"], ADMIN["password"], False)
    console.callback_box.value = denied
    console.complete_button.click()
    text = message(console)
    assert text.startswith("Acme Corp (ACME-01):")
    assert "error=access_denied" in text
    assert console.output.value.count('data-kind="info"') == 1
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED
    assert not is_shown(console, console.callback_box)


def test_callback_of_other_company_switches(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    globex_url = start_opt_in(console, "GLOBEX-02")
    start_opt_in(console, "ACME-01")
    console.reason_box.value = "admin sent the address by mail"
    console.callback_box.value = admin_signs_in(globex_url)
    console.complete_button.click()
    text = message(console)
    assert "belongs to Globex (GLOBEX-02), not to the selected Acme Corp" in text
    assert "Globex (GLOBEX-02): company GLOBEX-02 is authorized" in text
    assert console.selected_id == "GLOBEX-02"
    assert console.company_select.value == "GLOBEX-02"
    assert 'data-company-id="GLOBEX-02"' in console.summary_html.value
    assert manager.get_company("GLOBEX-02").state == State.AUTHORIZED
    assert manager.get_company("ACME-01").state == State.PENDING
    entry = manager.get_history("GLOBEX-02", newest_first=True)[0]
    assert entry.reason == "admin sent the address by mail"


def test_failed_callback_of_other_company(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    old_globex_url = start_opt_in(console, "GLOBEX-02")
    manager.begin_opt_in("GLOBEX-02", actor="batch")
    start_opt_in(console, "ACME-01")
    console.callback_box.value = admin_signs_in(old_globex_url)
    console.complete_button.click()
    text = message(console)
    assert "belongs to Globex (GLOBEX-02)" in text
    assert "Complete failed for Globex (GLOBEX-02)" in text
    assert "Complete failed for Acme Corp" not in text
    assert console.selected_id == "GLOBEX-02"
    assert console.output.value.count('data-kind="error"') == 1


def test_oauth_dialog_closes_on_outside_change(
    console: Console, manager: Manager, settings: Settings, admin: dict[str, str]
) -> None:
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    with other_manager(settings) as cli:
        opt_in_directly(cli, "ACME-01")
    console.status_button.click()
    assert not is_shown(console, console.dialog)
    assert is_shown(console, console.badge_button)


def test_continue_on_stale_dialog_does_nothing(
    console: Console, manager: Manager, settings: Settings
) -> None:
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    with other_manager(settings) as cli:
        cli.begin_opt_in("ACME-01", actor="cli")
    # The page still shows the dialog, because nothing redrew the panel.
    console.continue_button.click()
    text = message(console)
    assert "Continue did nothing for Acme Corp (ACME-01)" in text
    assert "last change was request_authorization by cli" in text
    assert "It is pending now" in text
    assert [e.actor for e in manager.get_history("ACME-01")] == ["test", "cli"]
    assert not is_shown(console, console.dialog)


def test_stale_oauth_button_opens_no_dialog(
    console: Console, manager: Manager, settings: Settings, admin: dict[str, str]
) -> None:
    console.company_select.value = "ACME-01"
    with other_manager(settings) as cli:
        opt_in_directly(cli, "ACME-01")
    console.oauth_button.click()
    text = message(console)
    assert "OAuth failed for Acme Corp (ACME-01)" in text
    assert "Its last change was authorize by test at" in text
    assert not is_shown(console, console.dialog)


def test_stale_opt_out_button_asks_nothing(
    console: Console, manager: Manager, settings: Settings
) -> None:
    start_opt_in(console, "ACME-01")
    with other_manager(settings) as cli:
        cli.cancel_opt_in("ACME-01", actor="cli")
    console.opt_out_button.click()
    assert "Opt-Out failed for Acme Corp (ACME-01)" in message(console)
    assert not is_shown(console, console.opt_out_dialog)


def test_continue_retries_after_locked_database(
    console: Console, manager: Manager, settings: Settings
) -> None:
    manager.store.conn.execute("PRAGMA busy_timeout=100")
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    with sqlite3.connect(settings.db_path) as writer:
        writer.execute("BEGIN IMMEDIATE")
        console.continue_button.click()
        writer.rollback()
    text = message(console)
    assert "Continue failed for Acme Corp (ACME-01)" in text
    assert "stayed locked" in text
    assert is_shown(console, console.continue_button)
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED

    console.continue_button.click()
    assert manager.get_company("ACME-01").state == State.PENDING
    assert "Sign-in link created" in message(console)


# -- opt-out ------------------------------------------------------------------------


def test_opt_out_needs_confirmation(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_by_pasting(console, "ACME-01")
    assert not is_shown(console, console.opt_out_button)
    console.badge_button.click()
    assert is_shown(console, console.opt_out_button)

    console.opt_out_button.click()
    assert is_shown(console, console.confirm_opt_out_button)
    assert manager.get_company("ACME-01").state == State.AUTHORIZED

    console.cancel_opt_out_button.click()
    assert not is_shown(console, console.confirm_opt_out_button)
    assert manager.get_company("ACME-01").state == State.AUTHORIZED


def test_confirmed_opt_out_explains_no_revoke(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_by_pasting(console, "ACME-01")
    access_expires_at = manager.get_company("ACME-01").access_expires_at
    assert access_expires_at is not None
    console.badge_button.click()
    console.opt_out_button.click()
    console.confirm_opt_out_button.click()
    assert manager.get_company("ACME-01").state == State.OPTED_OUT
    text = message(console)
    assert "authorization was removed" in text
    assert "UPS has no revoke endpoint" in text
    assert access_expires_at[:19].replace("T", " ") in text


def test_confirm_without_asking_does_nothing(
    console: Console, manager: Manager
) -> None:
    manager.begin_opt_in("ACME-01", actor="test")
    console.company_select.value = "ACME-01"
    console.confirm_opt_out_button.click()
    assert manager.get_company("ACME-01").state == State.PENDING


def test_confirm_on_stale_dialog_does_nothing(
    console: Console, manager: Manager, settings: Settings
) -> None:
    start_opt_in(console, "ACME-01")
    console.opt_out_button.click()
    assert is_shown(console, console.confirm_opt_out_button)
    with other_manager(settings) as cli:
        cli.cancel_opt_in("ACME-01", actor="cli")
    console.confirm_opt_out_button.click()
    text = message(console)
    assert "Confirm opt-out did nothing for Acme Corp (ACME-01)" in text
    assert "last change was cancel by cli" in text
    assert manager.get_company("ACME-01").state == State.UNAUTHORIZED
    assert "opt_out" not in triggers(manager, "ACME-01")
    assert not is_shown(console, console.opt_out_dialog)


def test_opt_out_dialog_closes_on_outside_change(
    console: Console, manager: Manager, settings: Settings
) -> None:
    start_opt_in(console, "ACME-01")
    console.opt_out_button.click()
    with other_manager(settings) as cli:
        cli.cancel_opt_in("ACME-01", actor="cli")
    console.status_button.click()
    assert not is_shown(console, console.opt_out_dialog)
    assert action_buttons(console) == {"OAuth", "Check status"}


def test_opt_out_without_tokens_names_old_token(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    first_expiry = manager.get_company("ACME-01").access_expires_at
    assert first_expiry is not None
    shown_expiry = first_expiry[:19].replace("T", " ")
    manager.opt_out("ACME-01", actor="test", confirm=True)
    start_opt_in(console, "ACME-01")
    console.opt_out_button.click()
    assert shown_expiry in text_of(console.opt_out_text.value)
    console.confirm_opt_out_button.click()
    text = message(console)
    assert manager.get_company("ACME-01").state == State.OPTED_OUT
    assert f"stays valid at UPS until it expires at {shown_expiry}" in text


def test_opt_out_never_authorized_company(console: Console, manager: Manager) -> None:
    start_opt_in(console, "ACME-01")
    console.opt_out_button.click()
    console.confirm_opt_out_button.click()
    assert "no access token was ever issued for this company" in message(console)


# -- refresh and password change ----------------------------------------------------


def test_refresh_requires_reason(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    console.refresh_button.click()
    assert "needs a reason" in message(console)
    assert "refresh" not in triggers(manager, "ACME-01")

    console.reason_box.value = "token check before the audit"
    console.refresh_button.click()
    entry = manager.get_history("ACME-01", newest_first=True)[0]
    assert entry.trigger == "refresh"
    assert entry.reason == "token check before the audit"
    assert "Refreshed the tokens" in message(console)


def test_password_change_requires_reason(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    console.reason_box.value = "   "
    console.password_button.click()
    assert "needs a reason" in message(console)
    assert manager.get_company("ACME-01").state == State.AUTHORIZED

    console.reason_box.value = "admin called: new password"
    console.password_button.click()
    assert manager.get_company("ACME-01").state == State.INVALIDATED
    assert "Recorded a password change" in message(console)


def test_invalid_action_names_company(console: Console, manager: Manager) -> None:
    console.company_select.value = "ACME-01"
    console.reason_box.value = "try it"
    console.refresh_button.click()
    text = message(console)
    assert "Refresh failed for Acme Corp (ACME-01)" in text
    assert "allowed triggers are: request_authorization" in text
    assert console.output.value.count('data-kind="error"') == 1
    assert triggers(manager, "ACME-01") == ["add"]


def test_action_without_selection(console: Console) -> None:
    console.oauth_button.click()
    assert "select a company" in message(console)


@pytest.mark.parametrize(
    ("status", "advice"),
    [(503, "retry later"), (429, "back off and retry later"), (401, "OPTIN_CLIENT_ID")],
)
def test_refresh_ups_error_names_company(
    console: Console,
    manager: Manager,
    admin: dict[str, str],
    sandbox_http: httpx.Client,
    status: int,
    advice: str,
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    console.reason_box.value = "audit"
    add_fault(sandbox_http, status=status)
    console.refresh_button.click()
    text = message(console)
    assert text.startswith("Refresh failed for Acme Corp (ACME-01)")
    assert f"HTTP {status}" in text
    assert advice in text
    assert manager.get_company("ACME-01").state == State.AUTHORIZED
    assert console.reason_box.value == "audit"
    assert console.refresh_button.disabled is False


def test_refresh_timeout_keeps_tokens(
    manager: Manager,
    companies: None,
    settings: Settings,
    admin: dict[str, str],
    sandbox_http: httpx.Client,
) -> None:
    opt_in_directly(manager, "ACME-01")
    quick = dataclasses.replace(settings, timeout=0.3)
    with Manager(quick) as impatient:
        console = Console(impatient, actor="ana")
        console.company_select.value = "ACME-01"
        console.reason_box.value = "audit"
        add_fault(sandbox_http, delay=1.0)
        console.refresh_button.click()
        text = message(console)
        assert text.startswith("Refresh failed for Acme Corp (ACME-01)")
        assert "timed out" in text
        assert "The stored tokens are kept" in text
        assert console.errors == []
    assert manager.get_company("ACME-01").state == State.AUTHORIZED


def test_refresh_with_sandbox_down(
    manager: Manager, companies: None, settings: Settings, admin: dict[str, str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    opt_in_directly(manager, "ACME-01")
    unreachable = dataclasses.replace(settings, base_url=down_url)
    with Manager(unreachable) as offline:
        console = Console(offline, actor="ana")
        console.company_select.value = "ACME-01"
        console.reason_box.value = "audit"
        console.refresh_button.click()
        text = message(console)
        assert text.startswith("Refresh failed for Acme Corp (ACME-01)")
        assert "ConnectError" in text
        assert console.errors == []
    assert manager.get_company("ACME-01").state == State.AUTHORIZED


def test_stale_refresh_names_last_change(
    console: Console, manager: Manager, settings: Settings, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    with other_manager(settings) as cli:
        cli.record_password_change("ACME-01", actor="cli", reason="admin called")
    console.reason_box.value = "audit"
    console.refresh_button.click()
    text = message(console)
    assert "Refresh failed for Acme Corp (ACME-01)" in text
    assert "Its last change was invalidate by cli at" in text
    assert action_buttons(console) == {"OAuth", "Opt-Out", "Check status"}


def test_reason_cleared_after_change(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    console.reason_box.value = "token check"
    console.refresh_button.click()
    assert console.reason_box.value == ""
    console.badge_button.click()
    console.opt_out_button.click()
    console.confirm_opt_out_button.click()
    entry = manager.get_history("ACME-01", newest_first=True)[0]
    assert entry.trigger == "opt_out"
    assert entry.reason is None


def test_reason_not_carried_to_other_company(
    console: Console, manager: Manager
) -> None:
    console.company_select.value = "ACME-01"
    console.reason_box.value = "only about Acme"
    console.company_select.value = "GLOBEX-02"
    assert console.reason_box.value == ""
    console.oauth_button.click()
    console.continue_button.click()
    assert manager.get_history("GLOBEX-02", newest_first=True)[0].reason is None


# -- double clicks and busy buttons -------------------------------------------------


def test_double_click_starts_one_opt_in(console: Console, manager: Manager) -> None:
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    console.continue_button.click()
    console.continue_button.click()
    assert triggers(manager, "ACME-01").count("request_authorization") == 1


def test_reentrant_continue_starts_one_opt_in(
    console: Console, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    disabled_during_work: list[bool] = []
    begin = manager.begin_opt_in

    def begin_and_click_again(company_id: str, **options: Any) -> Any:
        disabled_during_work.append(console.continue_button.disabled)
        console.continue_button.click()
        console._on_continue()
        return begin(company_id, **options)

    monkeypatch.setattr(manager, "begin_opt_in", begin_and_click_again)
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    console.continue_button.click()
    assert disabled_during_work == [True]
    assert triggers(manager, "ACME-01").count("request_authorization") == 1
    assert console.continue_button.disabled is False


def test_double_click_refreshes_once(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.company_select.value = "ACME-01"
    console.reason_box.value = "scheduled"
    console.refresh_button.click()
    console.refresh_button.click()
    assert triggers(manager, "ACME-01").count("refresh") == 1


def test_reentrant_refresh_refreshes_once(
    console: Console,
    manager: Manager,
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opt_in_directly(manager, "ACME-01")
    refresh = manager.refresh
    disabled_during_work: list[bool] = []

    def refresh_and_click_again(company_id: str, **options: Any) -> Any:
        disabled_during_work.append(console.refresh_button.disabled)
        console.refresh_button.click()
        return refresh(company_id, **options)

    monkeypatch.setattr(manager, "refresh", refresh_and_click_again)
    console.company_select.value = "ACME-01"
    console.reason_box.value = "scheduled"
    console.refresh_button.click()
    assert disabled_during_work == [True]
    assert triggers(manager, "ACME-01").count("refresh") == 1


def test_repeat_after_window_runs_again(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    opt_in_directly(manager, "ACME-01")
    console.repeat_window = 0.0
    console.company_select.value = "ACME-01"
    console.reason_box.value = "scheduled"
    console.refresh_button.click()
    console.reason_box.value = "scheduled again"
    console.refresh_button.click()
    assert triggers(manager, "ACME-01").count("refresh") == 2


# -- history, diagram, secrets, errors ----------------------------------------------


def test_history_newest_first(console: Console) -> None:
    start_opt_in(console, "ACME-01")
    rows = re.findall(r'data-trigger="([^"]+)"', console.history_html.value)
    assert rows == ["request_authorization", "add"]
    assert "<th" in console.history_html.value
    for column in ("Time", "Trigger", "From", "To", "Actor", "Reason"):
        assert f">{column}</th>" in console.history_html.value


def test_diagram_shows_counts(console: Console) -> None:
    assert "unauthorized: 3" in text_of(console.counts_html.value)
    start_opt_in(console, "ACME-01")
    assert "pending: 1" in text_of(console.counts_html.value)
    markdown = console.diagram.outputs[0]["data"]["text/markdown"]
    assert markdown.startswith("```mermaid\n")
    assert 'state "pending (1)" as pending' in markdown


def test_no_secret_in_widgets(
    console: Console, manager: Manager, settings: Settings, admin: dict[str, str]
) -> None:
    url = start_opt_in(console, "ACME-01")
    state = parse_qs(urlsplit(url).query)["state"][0]
    pending = manager.store.get_pending(state)
    assert pending is not None
    callback_url = admin_signs_in(url)
    console.callback_box.value = callback_url
    console.complete_button.click()
    console.reason_box.value = "rotate"
    console.refresh_button.click()
    assert "Refreshed the tokens" in message(console)

    grant = manager.store.get_grant("ACME-01")
    assert grant is not None
    secrets = {
        "access token": grant.access_token.reveal(),
        "refresh token": grant.refresh_token.reveal(),
        "code": parse_qs(urlsplit(callback_url).query)["code"][0],
        "verifier": pending.verifier.reveal(),
        "client secret": settings.client_secret.reveal(),
    }
    texts = widget_texts(console)
    for name, secret in secrets.items():
        assert not any(secret in text for text in texts), name


def test_closed_link_leaves_widgets(
    console: Console, manager: Manager, admin: dict[str, str]
) -> None:
    url = start_opt_in(console, "ACME-01")
    state = parse_qs(urlsplit(url).query)["state"][0]
    console.callback_box.value = admin_signs_in(url)
    console.complete_button.click()
    assert console.link_html.value == ""
    assert not any(state in text for text in widget_texts(console))


def test_unexpected_error_is_recorded(
    manager: Manager, companies: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = Console(manager, actor="ana")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("token=do-not-show")

    monkeypatch.setattr(manager, "begin_opt_in", broken)
    console.company_select.value = "ACME-01"
    console.oauth_button.click()
    console.continue_button.click()
    assert [action for action, _ in console.errors] == ["Continue"]
    text = message(console)
    assert "unexpected RuntimeError" in text
    assert "Acme Corp (ACME-01)" in text
    assert "do-not-show" not in text


def test_display_shows_widget(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    displayed: list[Any] = []
    monkeypatch.setattr("IPython.display.display", displayed.append)
    console._ipython_display_()
    assert displayed == [console.widget]


# -- import and open_console ---------------------------------------------------------


def test_import_without_ipywidgets_names_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    for name in [n for n in sys.modules if n.startswith("optin.console")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"optin\[notebook\]"):
        __import__("optin.console")


def test_open_console_starts_receiver(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sandbox: SandboxServer,
) -> None:
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    monkeypatch.setenv("OPTIN_BASE_URL", sandbox.url)
    monkeypatch.setenv("OPTIN_REDIRECT_URI", redirect_uri)
    console = open_console(tmp_path / "optin.db", actor="ana")
    try:
        assert console.receiver_url == redirect_uri
        assert "receiver listens" in message(console)
        health = httpx.get(redirect_uri.replace("/callback", "/health"))
        assert health.json()["status"] == "ok"
        assert health.json()["service"] == "optin-receiver"
        assert console.errors == []
    finally:
        console.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(redirect_uri.replace("/callback", "/health"))


def test_open_console_port_busy(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sandbox: SandboxServer,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("OPTIN_BASE_URL", sandbox.url)
        monkeypatch.setenv("OPTIN_REDIRECT_URI", f"http://127.0.0.1:{port}/callback")
        console = open_console(tmp_path / "optin.db", actor="ana")
        try:
            assert console.receiver_url is None
            text = message(console)
            assert f"Port {port}" in text
            assert "paste each callback URL" in text
            assert console.errors == []
        finally:
            console.close()


def test_second_console_shares_receiver(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sandbox: SandboxServer,
) -> None:
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    monkeypatch.setenv("OPTIN_BASE_URL", sandbox.url)
    monkeypatch.setenv("OPTIN_REDIRECT_URI", redirect_uri)
    first = open_console(tmp_path / "optin.db", actor="ana")
    try:
        second = open_console(tmp_path / "optin.db", actor="ben")
        try:
            assert second.receiver_url == redirect_uri
            assert "Another console's callback receiver" in message(second)
            assert second.errors == []
        finally:
            second.close()
        other = open_console(tmp_path / "other.db", actor="ben")
        try:
            assert other.receiver_url is None
            assert "is in use" in message(other)
        finally:
            other.close()
    finally:
        first.close()


def test_open_console_without_receiver(
    clean_env: None, tmp_path: Path, sandbox: SandboxServer
) -> None:
    console = open_console(
        tmp_path / "optin.db", actor="ana", start_receiver=False, base_url=sandbox.url
    )
    try:
        assert console.receiver_url is None
        assert console.manager.settings.environment == "sandbox"
        assert console.errors == []
    finally:
        console.close()
