"""The ``optin`` command line: the API, plus ``sandbox``, ``receiver`` and ``demo``.

Exit codes: 0 success, 1 a usage error (unknown company, invalid transition,
bad callback), 2 invalid command-line arguments, 3 configuration, 4 UPS
rejected the request, 5 transient trouble (retry later), 6 database error.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from tabulate import tabulate

from optin import errors
from optin.api import Manager
from optin.config import Settings
from optin.lifecycle import (
    State,
    lifecycle_markdown,
    mermaid_diagram,
    transition_rows,
)
from optin.local import SANDBOX_ADMIN_PASSWORD, sandbox_users
from optin.models import AuthorizationLink, Company, HistoryEntry
from optin.serving import check_loopback

EXIT_CODES: dict[type[errors.OptinError], int] = {
    errors.TransientError: 5,
    errors.ConfigurationError: 3,
    errors.UPSError: 4,
    errors.StoreError: 6,
    errors.UsageError: 1,
}
COMPANY_COLUMNS = ("id", "name", "state", "updated_at", "access_expires_at")
STATE_CHOICE = click.Choice([state.value for state in State])


def exit_code_for(exc: errors.OptinError) -> int:
    for kind, code in EXIT_CODES.items():
        if isinstance(exc, kind):
            return code
    return 1


class Context:
    def __init__(self, db: str | None, as_json: bool, actor: str | None) -> None:
        self.db = db
        self.as_json = as_json
        self.actor = actor or os.environ.get("OPTIN_ACTOR") or getpass.getuser()

    @contextmanager
    def manager(self, create: bool = False) -> Iterator[Manager]:
        """Open the database; only commands that add companies may create it."""
        with Manager(Settings.load(db_path=self.db), create=create) as opened:
            yield opened

    def emit(self, data: Any, text: Callable[[], str]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        else:
            click.echo(text())


pass_context = click.make_pass_decorator(Context)
with_reason = click.option(
    "--reason", help="Why this change is made; kept in the history."
)


@click.group()
@click.option("--db", envvar="OPTIN_DB", help="SQLite file [default: data/optin.db].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--actor",
    envvar="OPTIN_ACTOR",
    help="Who makes the change, for the history [default: the OS user].",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log more to standard error: -v for each action, -vv for each step.",
)
@click.version_option(package_name="optin")
@click.pass_context
def cli(
    ctx: click.Context,
    db: str | None,
    as_json: bool,
    actor: str | None,
    verbose: int,
) -> None:
    """Run the UPS OAuth opt-in lifecycle for many companies.

    Without configuration every command talks to the loopback UPS sandbox
    (start it with `optin sandbox`). Set OPTIN_ENV=cie or production and the
    app credentials to reach UPS.
    """
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
        logging.getLogger("optin").setLevel(level)
    ctx.obj = Context(db, as_json, actor)


def company_table(companies: Sequence[Company]) -> str:
    rows = [[getattr(c, name) for name in COMPANY_COLUMNS] for c in companies]
    if not rows:
        return "(no companies)"
    return str(tabulate(rows, headers=list(COMPANY_COLUMNS)))


def history_table(entries: Sequence[HistoryEntry]) -> str:
    headers = ["at", "company_id", "trigger", "from", "to", "actor", "reason"]
    rows = [
        [
            e.at,
            e.company_id,
            e.trigger,
            e.from_state or "",
            e.to_state,
            e.actor,
            e.reason or "",
        ]
        for e in entries
    ]
    return str(tabulate(rows, headers=headers)) if rows else "(no history)"


def show_company(obj: Context, company: Company, note: str = "") -> None:
    obj.emit(
        company.as_dict(),
        lambda: (note + "\n" if note else "") + company_table([company]),
    )


@cli.command()
@click.argument("company_id")
@click.argument("name")
@click.option("--email", help="The company admin's email.")
@with_reason
@pass_context
def add(
    obj: Context, company_id: str, name: str, email: str | None, reason: str | None
) -> None:
    """Add one company in state unauthorized."""
    with obj.manager(create=True) as manager:
        company = manager.add_company(
            company_id, name, email, actor=obj.actor, reason=reason
        )
    show_company(obj, company)


@cli.command("import")
@click.argument(
    "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@with_reason
@pass_context
def import_(obj: Context, csv_file: Path, reason: str | None) -> None:
    """Add companies from a CSV file with columns id, name, admin_email."""
    with obj.manager(create=True) as manager:
        added = manager.import_companies(csv_file, actor=obj.actor, reason=reason)
    obj.emit({"added": added}, lambda: f"added {added} companies")


@cli.command()
@click.argument("company_id")
@with_reason
@pass_context
def begin(obj: Context, company_id: str, reason: str | None) -> None:
    """Begin an opt-in and print the UPS.com link for the company's admin."""
    with obj.manager() as manager:
        link = manager.begin_opt_in(company_id, actor=obj.actor, reason=reason)
    data = {"company_id": company_id, "url": link.url, "expires_at": link.expires_at}
    obj.emit(
        data, lambda: f"{link.url}\n(link expires {link.expires_at:%Y-%m-%d %H:%M} UTC)"
    )


@cli.command("begin-all")
@click.option(
    "--state",
    type=STATE_CHOICE,
    default="invalidated",
    show_default=True,
    help="Begin an opt-in for every company in this state.",
)
@click.option(
    "--links-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write company id, admin email and link to this CSV file.",
)
@with_reason
@pass_context
def begin_all(
    obj: Context, state: str, links_csv: Path | None, reason: str | None
) -> None:
    """Begin opt-ins in bulk, e.g. re-opt-in of invalidated companies.

    Without --links-csv the links are printed, so that none is lost.
    """
    if links_csv is not None:
        # Checked first: the links only exist once the companies moved.
        check_writable(links_csv)
    with obj.manager() as manager:
        links, failed = manager.begin_opt_in_all(state, actor=obj.actor, reason=reason)
        if links_csv is not None:
            try:
                manager.export_links(links, links_csv)
            except OSError as exc:
                # The companies already moved: print the links rather than lose them.
                click.echo(_begin_all_text(links, failed, None))
                raise click.ClickException(
                    f"cannot write {links_csv}: {exc.strerror}; the links above "
                    "are the only copy"
                ) from None
    data = {
        "started": [
            {
                "company_id": link.company_id,
                "url": link.url,
                "expires_at": link.expires_at,
            }
            for link in links
        ],
        "failed": failed,
        "links_csv": str(links_csv) if links_csv else None,
    }
    obj.emit(data, lambda: _begin_all_text(links, failed, links_csv))
    if failed:
        sys.exit(1)


def check_writable(path: Path) -> None:
    """Raise BadParameter unless ``path`` can be created or written."""
    if not path.parent.is_dir():
        raise click.BadParameter(
            f"folder {path.parent} does not exist", param_hint="--links-csv"
        )
    try:
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {path}: {exc.strerror}", param_hint="--links-csv"
        ) from None


def _begin_all_text(
    links: Sequence[AuthorizationLink], failed: dict[str, str], links_csv: Path | None
) -> str:
    lines = [f"began {len(links)} opt-ins, {len(failed)} failed"]
    if links_csv is not None:
        lines.append(f"links written to {links_csv}")
    elif links:
        rows = [[link.company_id, link.url] for link in links]
        lines.append(str(tabulate(rows, headers=["company_id", "link"])))
    lines += [f"  {company}: {message}" for company, message in failed.items()]
    return "\n".join(lines)


@cli.command()
@click.argument("callback_url", required=False, default="-")
@with_reason
@pass_context
def complete(obj: Context, callback_url: str, reason: str | None) -> None:
    """Complete an opt-in from the URL the browser landed on after UPS.

    CALLBACK_URL may be - (the default) to read the URL from standard input,
    which keeps its authorization code out of ps and the shell history.
    """
    if callback_url == "-":
        callback_url = read_callback_url()
    with obj.manager() as manager:
        result = manager.complete_opt_in(callback_url, actor=obj.actor, reason=reason)
    data = {"outcome": result.outcome, "company": result.company.as_dict()}
    obj.emit(data, lambda: result.message)


def read_callback_url() -> str:
    """Read the callback URL from standard input, prompting on a terminal."""
    if sys.stdin.isatty():
        # Hidden, so that the authorization code stays off the screen.
        text = click.prompt("Callback URL", hide_input=True, err=True)
    else:
        text = sys.stdin.read()
    url = str(text).strip()
    if not url:
        raise click.UsageError(
            "missing callback URL: standard input is empty. Pipe the URL in "
            "(... | optin complete -) or pass it as an argument"
        )
    return url


@cli.command()
@click.argument("company_id")
@with_reason
@pass_context
def cancel(obj: Context, company_id: str, reason: str | None) -> None:
    """Cancel a pending opt-in (the company returns to its earlier state)."""
    with obj.manager() as manager:
        company = manager.cancel_opt_in(company_id, actor=obj.actor, reason=reason)
    show_company(obj, company)


@cli.command()
@click.argument("company_id")
@with_reason
@pass_context
def refresh(obj: Context, company_id: str, reason: str | None) -> None:
    """Refresh one company's tokens at UPS."""
    with obj.manager() as manager:
        company = manager.refresh(company_id, actor=obj.actor, reason=reason)
    show_company(obj, company)


@cli.command("refresh-all")
@click.option(
    "--due-within", type=float, help="Only tokens expiring within this many hours."
)
@click.option(
    "--max-invalidations",
    type=click.IntRange(min=1),
    help="Stop after this many dead grants [default: max(10, 20% of those swept)].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Refreshes sent to UPS in parallel.",
)
@with_reason
@pass_context
def refresh_all(
    obj: Context,
    due_within: float | None,
    max_invalidations: int | None,
    workers: int,
    reason: str | None,
) -> None:
    """Refresh every authorized company; dead grants become invalidated."""
    window = timedelta(hours=due_within) if due_within is not None else None
    with obj.manager() as manager:
        report = manager.refresh_all(
            actor=obj.actor,
            reason=reason,
            due_within=window,
            max_invalidations=max_invalidations,
            workers=workers,
        )
    obj.emit(report.as_dict(), lambda: _sweep_text(report.as_dict()))
    if report.stop_error is not None:
        sys.exit(exit_code_for(report.stop_error))
    if report.failed or report.stopped_reason:
        sys.exit(5)


def _sweep_text(report: dict[str, Any]) -> str:
    lines = [
        f"refreshed: {len(report['refreshed'])}",
        f"invalidated: {len(report['invalidated'])} {' '.join(report['invalidated'])}",
        f"failed: {len(report['failed'])}",
        f"skipped: {len(report['skipped'])}",
    ]
    lines += [
        f"  {company}: {message}" for company, message in report["failed"].items()
    ]
    if report["stopped_reason"]:
        lines.append(f"stopped early: {report['stopped_reason']}")
    return "\n".join(lines)


@cli.command("password-changed")
@click.argument("company_id")
@with_reason
@pass_context
def password_changed(obj: Context, company_id: str, reason: str | None) -> None:
    """Record that the company's UPS.com user changed their password."""
    with obj.manager() as manager:
        company = manager.record_password_change(
            company_id, actor=obj.actor, reason=reason
        )
    show_company(obj, company)


@cli.command("opt-out")
@click.argument("company_id")
@click.option("--yes", is_flag=True, help="Confirm: delete the company's tokens.")
@with_reason
@pass_context
def opt_out(obj: Context, company_id: str, yes: bool, reason: str | None) -> None:
    """Opt a company out: delete its tokens (UPS has no revoke endpoint)."""
    with obj.manager() as manager:
        before = manager.get_company(company_id)
        company = manager.opt_out(
            company_id, actor=obj.actor, reason=reason, confirm=yes
        )
    note = "authorization removed; UPS has no revoke endpoint"
    if before.access_expires_at:
        note += (
            f", so the last access token stays valid until {before.access_expires_at}"
        )
    obj.emit(
        {**company.as_dict(), "note": note},
        lambda: note + "\n" + company_table([company]),
    )


@cli.command()
@click.argument("company_id")
@pass_context
def status(obj: Context, company_id: str) -> None:
    """Show one company's state and token expiry."""
    with obj.manager() as manager:
        company = manager.get_company(company_id)
    show_company(obj, company)


@cli.command("list")
@click.option("--state", type=STATE_CHOICE, help="Only companies in this state.")
@click.option("--search", help="Substring of id, name or admin email.")
@pass_context
def list_(obj: Context, state: str | None, search: str | None) -> None:
    """List companies, optionally by state."""
    with obj.manager() as manager:
        companies = manager.list_companies(state, search)
    obj.emit([c.as_dict() for c in companies], lambda: company_table(companies))


@cli.command()
@click.argument("company_id", required=False)
@pass_context
def history(obj: Context, company_id: str | None) -> None:
    """Show the history of one company, or of all companies."""
    with obj.manager() as manager:
        entries = manager.get_history(company_id)
    obj.emit([e.as_dict() for e in entries], lambda: history_table(entries))


@cli.command()
@pass_context
def counts(obj: Context) -> None:
    """Count companies per state."""
    with obj.manager() as manager:
        by_state = manager.count_by_state()
    obj.emit(
        by_state,
        lambda: tabulate(list(by_state.items()), headers=["state", "companies"]),
    )


@cli.command("expire-links")
@pass_context
def expire_links(obj: Context) -> None:
    """Cancel pending opt-ins whose link expired."""
    with obj.manager() as manager:
        expired = manager.expire_links(actor=obj.actor)
    obj.emit({"expired": expired}, lambda: f"expired {len(expired)} links")


README_START = "<!-- lifecycle:start -->"
README_END = "<!-- lifecycle:end -->"


def render_readme(text: str) -> str:
    """Replace the README's lifecycle block with one generated from the table."""
    if README_START not in text or README_END not in text:
        raise click.ClickException(
            f"the file has no lifecycle block; add the lines {README_START} and "
            f"{README_END} where the table and diagram should go"
        )
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{lifecycle_markdown()}{README_END}{tail}"


@cli.command()
@click.option(
    "--counts/--no-counts",
    "with_counts",
    default=False,
    help="Add the number of companies per state from the database.",
)
@click.option("--markdown", is_flag=True, help="Print the README's Markdown block.")
@click.option(
    "--write-readme",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Regenerate the lifecycle block of this README file in place.",
)
@pass_context
def diagram(
    obj: Context, with_counts: bool, markdown: bool, write_readme: Path | None
) -> None:
    """Print the lifecycle as a Mermaid state diagram and a table."""
    if write_readme is not None:
        text = write_readme.read_text(encoding="utf-8")
        write_readme.write_text(render_readme(text), encoding="utf-8")
        return
    if markdown:
        click.echo(lifecycle_markdown(), nl=False)
        return
    counts_by_state = None
    if with_counts:
        with obj.manager() as manager:
            counts_by_state = manager.count_by_state()
    text = mermaid_diagram(counts_by_state)
    rows = transition_rows()
    obj.emit(
        {"mermaid": text, "transitions": rows},
        lambda: text + "\n" + tabulate(rows, headers=["trigger", "from", "to", "when"]),
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback host.")
@click.option(
    "--admins",
    "admins_csv",
    default="data/companies.csv",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Create a UPS.com user for each admin_email in this CSV, if it exists.",
)
@click.option(
    "--admin-password",
    default=SANDBOX_ADMIN_PASSWORD,
    show_default=True,
    help="Password of the users created from --admins.",
)
def sandbox(
    host: str, port: int, allow_remote: bool, admins_csv: Path, admin_password: str
) -> None:
    """Serve the UPS sandbox (OAuth endpoints and sign-in pages) on loopback."""
    from optin.sandbox import SandboxSettings
    from optin.sandbox.server import serve

    try:
        check_loopback(host, allow_remote)
    except ValueError:
        raise click.BadParameter(
            f"{host!r} is not a loopback address; the sandbox has no real "
            "authentication, so pass --allow-remote to listen there anyway",
            param_hint="--host",
        ) from None
    users = sandbox_users(admins_csv, admin_password)
    if not users:
        click.echo(f"warning: no admins read from {admins_csv}; no users", err=True)
    click.echo(f"UPS sandbox on http://{host}:{port} (Ctrl-C stops it)")
    if users:
        click.echo(
            f"{len(users)} UPS.com users from {admins_csv}: sign in with the "
            f"admin email and the password {admin_password!r}"
        )
    serve(
        host=host,
        port=port,
        settings=SandboxSettings(users=users),
        allow_remote=allow_remote,
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port", type=int, help="Port to listen on [default: the redirect URI's port]."
)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback host.")
@pass_context
def receiver(obj: Context, host: str, port: int | None, allow_remote: bool) -> None:
    """Serve the callback receiver that completes opt-ins at the redirect URI."""
    from urllib.parse import urlsplit

    import uvicorn

    from optin.receiver import create_receiver

    check_loopback(host, allow_remote)
    settings = Settings.load(db_path=obj.db)
    port = port or urlsplit(settings.redirect_uri).port or 8766
    manager = Manager(settings, create=False)
    click.echo(f"callback receiver on http://{host}:{port} for {settings.redirect_uri}")
    uvicorn.run(
        create_receiver(manager),
        host=host,
        port=port,
        log_level="warning",
        # Access logs would contain callback URLs, and so authorization codes.
        access_log=False,
    )


@cli.command()
@click.option(
    "--companies",
    "companies_csv",
    default="data/companies.csv",
    show_default=True,
    type=click.Path(exists=True, path_type=Path),
)
@pass_context
def demo(obj: Context, companies_csv: Path) -> None:
    """Run the whole lifecycle for every company against an embedded sandbox.

    The database (default data/optin.db) is made anew; an existing file is
    replaced only if an earlier demo made it.
    """
    from optin.demo import run_demo

    db = Path(obj.db or "data/optin.db")
    sys.exit(run_demo(db, companies_csv, echo=click.echo))


def main(argv: Sequence[str] | None = None) -> None:
    # Warnings and errors that the toolkit logs go to standard error; -v
    # lowers the optin loggers' level.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        cli.main(args=argv, prog_name="optin", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except errors.OptinError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
