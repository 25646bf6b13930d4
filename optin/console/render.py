"""HTML fragments of the console: badges, tables, messages and the sign-in link.

Pure functions over the API's records, without ipywidgets, so they are cheap to
test. Every value from the database is escaped. Styles are inline because a
notebook loads no stylesheet of ours. The class names are stable hooks for
browser tests: a state badge is ``span.optin-badge.optin-state`` with a
``data-state`` attribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Final

from optin.lifecycle import State
from optin.models import AuthorizationLink, Company, HistoryEntry
from optin.store import utc_text

# Background colour of each state's badge, under white text.
STATE_COLOURS: Final = {
    State.UNAUTHORIZED: "#6c757d",
    State.PENDING: "#b26a00",
    State.AUTHORIZED: "#1e7e34",
    State.INVALIDATED: "#c82333",
    State.OPTED_OUT: "#343a40",
}
MESSAGE_COLOURS: Final = {"info": "#0c5460", "success": "#155724", "error": "#721c24"}
_TABLE_STYLE: Final = "border-collapse:collapse;font-size:0.9em"
_CELL_STYLE: Final = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"


def when(text: str | None) -> str:
    """Format a stored UTC instant as ``YYYY-MM-DD HH:MM:SS UTC``, or a dash."""
    if not text:
        return "-"
    return f"{text[:19].replace('T', ' ')} UTC"


def when_instant(moment: datetime) -> str:
    """Format an aware datetime like :func:`when`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def badge(state: State | str) -> str:
    """Render a coloured badge naming the state."""
    value = str(state)
    colour = STATE_COLOURS.get(State(value), "#6c757d")
    style = (
        f"background:{colour};color:#fff;padding:1px 8px;border-radius:10px;"
        "font-weight:600;white-space:nowrap"
    )
    return (
        f'<span class="optin-badge optin-state optin-state-{escape(value)}" '
        f'data-state="{escape(value)}" style="{style}">{escape(value)}</span>'
    )


def _row(cells: Iterable[str], header: bool = False, attrs: str = "") -> str:
    tag = "th" if header else "td"
    inner = "".join(f'<{tag} style="{_CELL_STYLE}">{cell}</{tag}>' for cell in cells)
    return f"<tr{attrs}>{inner}</tr>"


def _table(css_class: str, header: Sequence[str], rows: Iterable[str]) -> str:
    head = _row((escape(name) for name in header), header=True)
    return (
        f'<table class="{css_class}" style="{_TABLE_STYLE}">'
        f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def company_table(companies: Sequence[Company], total: int) -> str:
    """Render the listed companies; ``total`` counts the matches before the cut."""
    if not companies:
        return '<p class="optin-empty">No company matches the search and filter.</p>'
    header = (
        "Company",
        "Name",
        "State",
        "Changed",
        "Access expires",
        "Refresh expires",
    )
    rows = [
        _row(
            (
                escape(c.id),
                escape(c.name),
                badge(c.state),
                when(c.updated_at),
                when(c.access_expires_at),
                when(c.refresh_expires_at),
            ),
            attrs=f' data-company-id="{escape(c.id)}"',
        )
        for c in companies
    ]
    table = _table("optin-companies", header, rows)
    if total > len(companies):
        # Above the table, which scrolls in its box, so that the note stays visible.
        note = (
            f"Showing {len(companies)} of {total} companies; narrow the search "
            "to see the others."
        )
        table = f'<p class="optin-list-note">{escape(note)}</p>' + table
    return table


def company_summary(company: Company) -> str:
    """Render the panel's heading: name, id, admin, state and token expiry."""
    email = escape(company.admin_email or "no admin email")
    return (
        f'<div class="optin-summary" data-company-id="{escape(company.id)}" '
        f'data-state="{escape(company.state.value)}">'
        f"<h3 style='margin:4px 0'>{escape(company.name)} "
        f"<small>({escape(company.id)})</small></h3>"
        f"<div>Admin: {email} &middot; state {badge(company.state)} "
        f"since {when(company.updated_at)}</div>"
        f"<div>Access token expires: {when(company.access_expires_at)} &middot; "
        f"refresh token expires: {when(company.refresh_expires_at)}</div></div>"
    )


def history_table(entries: Sequence[HistoryEntry]) -> str:
    """Render history entries in the order given; the console passes newest first."""
    if not entries:
        return '<p class="optin-history optin-empty">No history yet.</p>'
    header = ("Time", "Trigger", "From", "To", "Actor", "Reason")
    rows = [
        _row(
            (
                when(e.at),
                escape(e.trigger),
                escape(e.from_state or "-"),
                escape(e.to_state),
                escape(e.actor),
                escape(e.reason or ""),
            ),
            attrs=f' data-trigger="{escape(e.trigger)}"',
        )
        for e in entries
    ]
    return _table("optin-history", header, rows)


def message(kind: str, text: str) -> str:
    """Render one message for the console's message area."""
    colour = MESSAGE_COLOURS.get(kind, MESSAGE_COLOURS["info"])
    return (
        f'<div class="optin-message-text optin-{escape(kind)}" '
        f'data-kind="{escape(kind)}" style="color:{colour};padding:4px 0">'
        f"{escape(text)}</div>"
    )


def sign_in_link(link: AuthorizationLink, company: Company) -> str:
    """Render the UPS.com sign-in link, opening in a new tab, and its expiry."""
    url = escape(link.url, quote=True)
    label = escape(f"Sign in at UPS.com for {company.name}")
    return (
        f'<div class="optin-link-box">'
        f'<a class="optin-link" href="{url}" target="_blank" '
        f'rel="noopener noreferrer">{label}</a> '
        f"(expires {when_instant(link.expires_at)}).<br>"
        f"<small>Or send this address to the admin: "
        f'<code class="optin-link-url" style="word-break:break-all">{url}</code>'
        f"</small></div>"
    )


def counts_text(counts: dict[str, int]) -> str:
    """Render the number of companies per state as a line of plain text."""
    parts = " · ".join(f"{state}: {n}" for state, n in counts.items())
    return f'<div class="optin-counts">Companies per state: {escape(parts)}</div>'


def mermaid_markdown(diagram: str) -> str:
    """Wrap Mermaid text in the fenced block that JupyterLab renders."""
    return f"```mermaid\n{diagram.rstrip()}\n```\n"


def missing_link_note() -> str:
    """Explain why a pending company shows no sign-in link."""
    text = (
        "This opt-in's sign-in link was created outside this console, or changed "
        "since, so it is not shown. Click OAuth to create a new link; the earlier "
        "link then stops working."
    )
    return f'<div class="optin-link-box optin-no-link">{escape(text)}</div>'


def callback_note(receiver_url: str | None) -> str:
    """Tell the analyst how the callback will complete the opt-in."""
    text = escape(after_sign_in(receiver_url))
    return f'<div class="optin-callback-note">{text}</div>'


def after_sign_in(receiver_url: str | None) -> str:
    """Describe what happens when the admin allows access at UPS.com."""
    if receiver_url:
        return (
            "When the admin allows access, UPS sends the browser to the callback "
            f"receiver at {receiver_url}, which completes the opt-in: click Check "
            "status to see it. If the receiver does not get the callback, paste the "
            "address the browser landed on below and click Complete."
        )
    return (
        "No callback receiver runs for this console: when the admin allows access, "
        "paste the address the browser landed on below and click Complete."
    )


def oauth_question(company_label: str, replaces_link: bool) -> str:
    """Render the question of the OAuth dialog."""
    text = (
        f"Opt in {company_label} at UPS? Continue creates a sign-in link for the "
        "company's admin, who signs in at UPS.com and allows this app access. "
        "Cancel changes nothing."
    )
    if replaces_link:
        text += " The company's earlier sign-in link stops working."
    return f'<div class="optin-dialog-text">{escape(text)}</div>'


def opt_out_question(
    company_label: str, access_expires_at: str | None, now: datetime
) -> str:
    """Render the request to confirm an opt-out."""
    text = (
        f"Opt out {company_label}? This removes the authorization and deletes "
        "every token stored for the company, which must opt in again to be used. "
        + no_revoke_note(access_expires_at, now)
    )
    return f'<div class="optin-opt-out-text">{escape(text)}</div>'


def no_revoke_note(access_expires_at: str | None, now: datetime) -> str:
    """Say how long the last access token issued stays valid at UPS.

    ``access_expires_at`` is that token's expiry as stored (ISO 8601 UTC), or
    None when no access token was ever issued for the company.
    """
    if access_expires_at is None:
        return (
            "UPS has no revoke endpoint, but no access token was ever issued for "
            "this company, so none stays valid."
        )
    if access_expires_at <= utc_text(now):
        return (
            "UPS has no revoke endpoint; the last access token issued for this "
            f"company already expired at {when(access_expires_at)}."
        )
    return (
        "UPS has no revoke endpoint, so the last access token stays valid at UPS "
        f"until it expires at {when(access_expires_at)}."
    )


def status_text(company_label: str, company: Company, awaiting_callback: bool) -> str:
    """Describe the company's current state, for the Check status button."""
    text = f"{company_label} is {company.state.value} since {when(company.updated_at)}."
    if company.access_expires_at:
        text += (
            f" Its access token expires at {when(company.access_expires_at)}, its "
            f"refresh token at {when(company.refresh_expires_at)}."
        )
    if awaiting_callback:
        text += (
            " It waits for the admin to sign in at UPS.com and for the callback "
            "to complete the opt-in."
        )
    return text
