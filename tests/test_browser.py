"""Drive the analyst console, served by Voila, in headless Chromium.

One company goes through a whole opt-in and an opt-out with clicks only: the
sandbox's sign-in pages open in a new tab, consent sends that tab to the
console's callback receiver, and the console then shows the result. On the
way, a refresh that fails with HTTP 503 from UPS must show its error in the page.
A full list of other companies checks that the panel and the message stay on
screen. Each step leaves a screenshot in tests/artifacts/browser/.

Chromium is Debian's /usr/bin/chromium, because Playwright's own browser
download is not available here. The browser may reach only 127.0.0.1. It
aborts every other request, and the test fails on any that Voila's own page
template does not explain.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import make_settings
from ipykernel.kernelspec import write_kernel_spec
from playwright.sync_api import BrowserContext, Page, Route, expect, sync_playwright

from optin import Manager, Settings, State
from optin.config import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from optin.sandbox import SandboxServer
from tests.helpers import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "analyst_console.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KERNEL_NAME = "python3"
COMPANY_ID = "CO-BROWSER"
COMPANY_NAME = "Browser Test Ltd"
ANALYST = "browser-analyst"
LOGIN = "browser-admin"
PASSWORD = "browser password 1"
# More companies than the console lists, sorted after COMPANY_ID, so that the
# list and the table are full.
FILLER_COMPANIES = 250
# Bounded, so that a hung page fails this test instead of hanging the run.
VOILA_START_TIMEOUT_S = 60
UI_TIMEOUT_MS = 20_000
# Voila 0.5.13's lab template links two Font Awesome stylesheets from this CDN.
# The browser aborts them like any other request that leaves loopback.
VOILA_TEMPLATE_CDN = "https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@"


def require_chromium() -> None:
    """Skip without Debian's Chromium, except in CI, which installs it."""
    if CHROMIUM.is_file():
        return
    reason = f"{CHROMIUM} not found. Install it with: apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)")
    pytest.skip(reason)


@dataclass
class Voila:
    url: str
    settings: Settings


@pytest.fixture
def console_settings(
    tmp_path: Path, sandbox: SandboxServer, sandbox_http: httpx.Client
) -> Settings:
    """Register the admin and a redirect URI at the sandbox, and add the companies."""
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    client = {
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "redirect_uris": [redirect_uri],
    }
    sandbox_http.post("/_sandbox/clients", json=client).raise_for_status()
    user = {"username": LOGIN, "email": f"{LOGIN}@example.com", "password": PASSWORD}
    sandbox_http.post("/_sandbox/users", json=user).raise_for_status()
    settings = make_settings(tmp_path, sandbox.url, redirect_uri=redirect_uri)
    fillers = [
        {"id": f"FILLER-{n:04d}", "name": f"Filler {n}", "admin_email": ""}
        for n in range(FILLER_COMPANIES)
    ]
    with Manager(settings) as manager:
        manager.add_company(
            COMPANY_ID, COMPANY_NAME, "admin@browser.example", actor="browser-test"
        )
        manager.import_companies(fillers, actor="browser-test")
    return settings


def wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Wait until Voila listens on ``port``, or fail with its log if it exits.

    Only the port is probed: a GET of the page would run the notebook in an
    extra kernel, whose callback receiver would hold the redirect URI's port.
    """
    deadline = time.monotonic() + VOILA_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"voila exited with {process.returncode}:\n{log.read_text()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(
        f"voila did not listen on port {port} in {VOILA_START_TIMEOUT_S} s:\n"
        f"{log.read_text()}"
    )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop Voila with SIGTERM, which makes it shut its kernels down first."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def voila_env(work: Path, settings: Settings) -> dict[str, str]:
    """Build Voila's environment: Jupyter dirs under ``work`` and optin's settings."""
    # A python3 kernelspec that starts this interpreter, found before any other
    # because JUPYTER_PATH lists its directory first.
    write_kernel_spec(work / "jupyter" / "kernels" / KERNEL_NAME)
    # An empty config file, so that a developer's own one cannot leak in.
    config = work / "optin.toml"
    config.write_text("")
    return {
        **os.environ,
        "JUPYTER_PATH": str(work / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(work / "config"),
        "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
        "OPTIN_CONFIG": str(config),
        "OPTIN_ENV": "sandbox",
        "OPTIN_DB": str(settings.db_path),
        "OPTIN_KEY_FILE": str(settings.resolved_key_file),
        "OPTIN_BASE_URL": settings.base_url,
        "OPTIN_REDIRECT_URI": settings.redirect_uri,
        "OPTIN_TIMEOUT": "5",
        "OPTIN_ACTOR": ANALYST,
    }


@pytest.fixture
def voila(
    tmp_path_factory: pytest.TempPathFactory, console_settings: Settings
) -> Iterator[Voila]:
    """Serve the console notebook with Voila on a free loopback port.

    Voila's log is printed at teardown, so pytest shows it when the test fails.
    """
    require_chromium()
    work = tmp_path_factory.mktemp("voila")
    env = voila_env(work, console_settings)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        # Fail instead of moving to another port if this one was taken meanwhile.
        "--Voila.port_retries=0",
        "--show_tracebacks=True",
    ]

    log = work / "voila.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(process, port, log)
        yield Voila(f"http://127.0.0.1:{port}/", console_settings)
    finally:
        stop_process(process)
        print(log.read_text(errors="replace"))


class Screenshots:
    """Numbered screenshots of the pages under test, in tests/artifacts/browser/."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.png"):
            old.unlink()
        self.directory = directory

    def take(self, name: str, page: Page) -> None:
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)


def opt_in_with_clicks(
    context: BrowserContext, page: Page, voila: Voila, shots: Screenshots
) -> None:
    """Select the company, start its opt-in and sign in at the sandbox."""
    # Voila responds once the kernel has run the notebook, and the widgets
    # render after that, so the first page gets the start-up budget.
    page.goto(voila.url, timeout=VOILA_START_TIMEOUT_S * 1000)
    select = page.locator(".optin-company-select select")
    option = select.locator("option", has_text=COMPANY_ID)
    expect(option).to_have_count(1, timeout=VOILA_START_TIMEOUT_S * 1000)
    shots.take("01-console", page)

    select.select_option(label=option.inner_text())
    badge = page.locator(f'.optin-summary[data-company-id="{COMPANY_ID}"] .optin-badge')
    expect(badge).to_have_text("unauthorized")
    # The full company table must not push the panel below the window.
    expect(page.locator(".optin-list-note")).to_contain_text("Showing 200 of")
    expect(page.locator("button.optin-oauth")).to_be_in_viewport()
    page.click("button.optin-oauth")
    expect(page.locator(".optin-dialog")).to_be_visible()
    shots.take("02-oauth-dialog", page)

    page.click("button.optin-continue")
    link = page.locator("a.optin-link")
    expect(link).to_be_visible()
    expect(badge).to_have_text("pending")
    shots.take("03-sign-in-link", page)

    with context.expect_page() as opened:
        link.click()
    signin = opened.value
    signin.wait_for_load_state()
    signin.fill("#userid", LOGIN)
    signin.check("#agreement")
    shots.take("04-ups-login", signin)
    signin.click("#continue")
    signin.fill("#password", PASSWORD)
    shots.take("05-ups-password", signin)
    signin.click("#signin")
    expect(signin.locator("#allow")).to_be_visible()
    shots.take("06-ups-consent", signin)

    signin.click("#allow")
    expect(signin.locator("#outcome")).to_have_text("Authorized")
    assert signin.url.startswith(voila.settings.redirect_uri + "?")
    assert "code=" not in signin.content()
    shots.take("07-callback-receiver", signin)


def check_and_opt_out(
    page: Page, voila: Voila, sandbox_http: httpx.Client, shots: Screenshots
) -> None:
    """Show the company authorized, fail one refresh, then opt the company out."""
    page.bring_to_front()
    page.click("button.optin-status")
    badge = page.locator(f'.optin-summary[data-company-id="{COMPANY_ID}"] .optin-badge')
    expect(badge).to_have_text("authorized")
    message = page.locator(".optin-message")
    expect(message).to_contain_text("is authorized since")
    shots.take("08-status-authorized", page)

    fault = {"endpoint": "refresh", "status": 503, "count": 1}
    sandbox_http.post("/_sandbox/faults", json=fault).raise_for_status()
    page.fill(".optin-reason input", "token check")
    page.click("button.optin-refresh")
    error = message.locator('[data-kind="error"]')
    expect(error).to_contain_text(f"Refresh failed for {COMPANY_NAME} ({COMPANY_ID})")
    expect(error).to_contain_text("HTTP 503")
    expect(error).to_be_in_viewport()
    expect(badge).to_have_text("authorized")
    shots.take("09-refresh-503", page)

    page.click("button.optin-authorized")
    page.click("button.optin-opt-out")
    expect(page.locator(".optin-opt-out-dialog")).to_be_visible()
    shots.take("10-opt-out-confirm", page)

    page.click("button.optin-confirm-opt-out")
    expect(message).to_contain_text("Opted out")
    expect(message).to_contain_text("UPS has no revoke endpoint")
    expect(badge).to_have_text("opted_out")
    shots.take("11-opted-out", page)


def test_console_opt_in_and_out(voila: Voila, sandbox_http: httpx.Client) -> None:
    shots = Screenshots(ARTIFACTS)
    blocked: list[str] = []

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1800})
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            context.route("**/*", loopback_only)
            page = context.new_page()
            try:
                opt_in_with_clicks(context, page, voila, shots)
                check_and_opt_out(page, voila, sandbox_http, shots)
            except BaseException:
                for number, open_page in enumerate(context.pages, start=1):
                    shots.take(f"99-failure-page-{number}", open_page)
                raise
        finally:
            browser.close()

    unexpected = [url for url in blocked if not url.startswith(VOILA_TEMPLATE_CDN)]
    assert unexpected == []
    with Manager(voila.settings) as manager:
        company = manager.get_company(COMPANY_ID)
        history = manager.get_history(COMPANY_ID)
    assert company.state == State.OPTED_OUT
    assert [(entry.trigger, entry.actor) for entry in history] == [
        ("add", "browser-test"),
        ("request_authorization", ANALYST),
        ("authorize", "callback-receiver"),
        ("opt_out", ANALYST),
    ]
