"""The analyst console: a company list and the selected company's panel.

The console has no state rules of its own. It shows the buttons of the
triggers that the lifecycle allows in the selected company's state. Each
button calls the Manager, which raises when the trigger is not allowed, and
the console shows that message.

ipywidgets swallows exceptions raised in callbacks, so every handler runs
through ``Console._run`` or ``Console._guard``: an OptinError becomes a short
message in the message area, and any other exception is also kept in
``Console.errors``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import ipywidgets as widgets

from optin.api import Manager
from optin.console import render
from optin.console.layout import button, heading, html_box, scroll_box
from optin.errors import (
    CompanyNotFound,
    ConcurrentUpdate,
    InvalidTransition,
    MalformedCallback,
    OptinError,
)
from optin.lifecycle import State, allowed_triggers, mermaid_diagram, next_state
from optin.models import AuthorizationLink, Company

logger = logging.getLogger(__name__)

ALL_STATES: Final = "all"
# Rows of the company list; a search or filter reaches the others.
MAX_ROWS: Final = 200
# Newest history rows shown in a company's panel.
MAX_HISTORY_ROWS: Final = 100
NO_SELECTION: Final = (
    "<p class='optin-no-selection'>Select a company in the list to see its "
    "actions and history.</p>"
)

# A handler returns True when the Manager changed something, which starts the
# repeat window of that action for that company.
Work = Callable[[str], bool]


@dataclass(frozen=True)
class Question:
    """An open confirmation dialog: its company and that company's version then.

    A dialog applies to the company as it was when the dialog opened, so any
    later change of the company (by this console or another process) closes it.
    """

    company_id: str
    version: int

    def is_for(self, company: Company) -> bool:
        return self.company_id == company.id and self.version == company.version

    def is_outdated_by(self, company: Company) -> bool:
        return self.company_id == company.id and self.version != company.version


class Console:
    """An ipywidgets console over one Manager, acting as ``actor``.

    Display ``console`` (or ``console.widget``) in a notebook cell.
    ``receiver_url`` is the redirect URI served by a running callback
    receiver; without one, the analyst pastes the callback URL into the panel.
    """

    # A repeat of an action on the same company within this many seconds after
    # it changed something is taken as a double click and ignored. Clicks that
    # queued while the kernel was busy arrive right after the first one finished.
    repeat_window: float = 1.0

    def __init__(
        self, manager: Manager, actor: str, receiver_url: str | None = None
    ) -> None:
        self.manager = manager
        self.actor = actor
        self.receiver_url = receiver_url
        self.selected_id: str | None = None
        # (action, exception) of every unexpected exception a handler caught.
        self.errors: list[tuple[str, BaseException]] = []
        # (kind, text) of every message shown, oldest first.
        self.messages: list[tuple[str, str]] = []

        # company id -> (link, company version right after the link was made)
        self._links: dict[str, tuple[AuthorizationLink, int]] = {}
        self._oauth_question: Question | None = None
        self._opt_out_offered_for: str | None = None
        self._opt_out_question: Question | None = None
        self._busy: set[tuple[str, str]] = set()
        self._changed_at: dict[tuple[str, str], float] = {}
        self._syncing_list = False
        self._drawn_counts: dict[str, int] | None = None
        self._closers: list[Callable[[], None]] = []

        self._build_list()
        self._build_actions()
        self._build_opt_in()
        self._build_opt_out()
        self._build_views()
        self.widget = self._layout()
        self._connect()
        self._guard("Load", self.reload)

    # -- widgets ----------------------------------------------------------------

    def _build_list(self) -> None:
        self.search = widgets.Text(
            description="Search",
            placeholder="id, name or admin email",
            continuous_update=True,
        ).add_class("optin-search")
        self.state_filter = widgets.Dropdown(
            description="State",
            options=[ALL_STATES, *(state.value for state in State)],
            value=ALL_STATES,
        ).add_class("optin-state-filter")
        self.company_select = widgets.Select(
            description="Company",
            options=[],
            rows=8,
            layout=widgets.Layout(width="70%"),
        ).add_class("optin-company-select")
        self.company_table = html_box("optin-company-table")
        # The table can list MAX_ROWS companies, so it scrolls in a box of its
        # own below the panel instead of pushing the panel off the screen.
        self.company_table_box = scroll_box(
            self.company_table, "optin-company-table-box", max_height="320px"
        )

    def _build_actions(self) -> None:
        self.badge_html = html_box("optin-badge-area")
        self.badge_button = button(
            "Authorized",
            "authorized",
            style="success",
            tooltip="Authorized at UPS; click to offer Opt-Out",
        ).add_class("optin-badge")
        self.oauth_button = button(
            "OAuth", "oauth", tooltip="Send the company's admin to UPS.com to opt in"
        )
        self.cancel_opt_in_button = button("Cancel opt-in", "cancel-opt-in")
        self.refresh_button = button(
            "Refresh", "refresh", tooltip="Refresh the tokens at UPS (needs a reason)"
        )
        self.password_button = button(
            "Record password change",
            "password-change",
            tooltip="The admin changed the UPS.com password (needs a reason)",
        )
        self.opt_out_button = button("Opt-Out", "opt-out", style="danger")
        self.status_button = button(
            "Check status", "status", tooltip="Read the company again"
        )
        self.reason_box = widgets.Text(
            description="Reason",
            placeholder="needed for Refresh and Record password change",
        ).add_class("optin-reason")

    def _build_opt_in(self) -> None:
        self.dialog_text = html_box("optin-dialog-question")
        self.continue_button = button("Continue", "continue", style="primary")
        self.cancel_dialog_button = button("Cancel", "cancel-dialog")
        self.dialog = widgets.VBox(
            [
                self.dialog_text,
                widgets.HBox([self.continue_button, self.cancel_dialog_button]),
            ],
            layout=widgets.Layout(border="1px solid #999", padding="6px"),
        ).add_class("optin-dialog")
        self.link_html = html_box("optin-link-area")
        self.callback_note = html_box("optin-callback-note-area")
        self.callback_box = widgets.Text(
            description="Callback URL",
            placeholder="the address the browser landed on after UPS",
            layout=widgets.Layout(width="70%"),
        ).add_class("optin-callback-box")
        self.complete_button = button("Complete", "complete", style="primary")
        self.callback_row = widgets.HBox([self.callback_box, self.complete_button])

    def _build_opt_out(self) -> None:
        self.opt_out_text = html_box("optin-opt-out-question")
        self.confirm_opt_out_button = button(
            "Confirm opt-out", "confirm-opt-out", style="danger"
        )
        self.cancel_opt_out_button = button("Cancel", "cancel-opt-out")
        self.opt_out_dialog = widgets.VBox(
            [
                self.opt_out_text,
                widgets.HBox([self.confirm_opt_out_button, self.cancel_opt_out_button]),
            ],
            layout=widgets.Layout(border="1px solid #c82333", padding="6px"),
        ).add_class("optin-opt-out-dialog")

    def _build_views(self) -> None:
        self.output = html_box("optin-message")
        self.summary_html = html_box("optin-summary-area")
        self.history_html = html_box("optin-history-area")
        self.counts_html = html_box("optin-counts-area")
        # An Output widget with Markdown, because JupyterLab renders Mermaid
        # fenced blocks in Markdown output and not in an HTML widget.
        self.diagram = widgets.Output().add_class("optin-diagram")
        self.no_selection_html = html_box("optin-no-selection", NO_SELECTION)
        self.history_heading = heading("History")
        self.action_row = widgets.HBox().add_class("optin-actions")
        self.panel = widgets.VBox().add_class("optin-panel")

    def _layout(self) -> Any:
        # The message area and the panel come right after the list, so that
        # picking a company or clicking a button shows its result on screen.
        return widgets.VBox(
            [
                heading("UPS opt-in console", level=2),
                widgets.HBox([self.search, self.state_filter]),
                self.company_select,
                self.output,
                self.panel,
                heading("Companies"),
                self.company_table_box,
                heading("Lifecycle"),
                self.counts_html,
                self.diagram,
            ]
        ).add_class("optin-console")

    def _connect(self) -> None:
        self.search.observe(self._on_filter_change, names="value")
        self.state_filter.observe(self._on_filter_change, names="value")
        self.company_select.observe(self._on_select, names="value")
        handlers = {
            self.oauth_button: self._on_oauth,
            self.continue_button: self._on_continue,
            self.cancel_dialog_button: self._on_cancel_dialog,
            self.complete_button: self._on_complete,
            self.status_button: self._on_status,
            self.cancel_opt_in_button: self._on_cancel_opt_in,
            self.refresh_button: self._on_refresh,
            self.password_button: self._on_password_change,
            self.badge_button: self._on_badge,
            self.opt_out_button: self._on_opt_out,
            self.confirm_opt_out_button: self._on_confirm_opt_out,
            self.cancel_opt_out_button: self._on_cancel_opt_out,
        }
        for widget, handler in handlers.items():
            widget.on_click(handler)

    def _action_buttons(self) -> list[Any]:
        return [
            self.badge_button,
            self.oauth_button,
            self.continue_button,
            self.cancel_dialog_button,
            self.complete_button,
            self.status_button,
            self.cancel_opt_in_button,
            self.refresh_button,
            self.password_button,
            self.opt_out_button,
            self.confirm_opt_out_button,
            self.cancel_opt_out_button,
        ]

    def _trigger_buttons(self) -> dict[str, Any]:
        return {
            "request_authorization": self.oauth_button,
            "cancel": self.cancel_opt_in_button,
            "refresh": self.refresh_button,
            "invalidate": self.password_button,
            "opt_out": self.opt_out_button,
        }

    # -- public -----------------------------------------------------------------

    def reload(self) -> None:
        """Read the company list, the selected company and the counts again."""
        self._render_list()
        self._render_panel()
        self._render_diagram()

    def select(self, company_id: str) -> None:
        """Show the panel of ``company_id``, as picking it in the list does.

        Open dialogs close, and a reason typed for another company is cleared,
        so that it cannot end up in this company's history.
        """
        if company_id != self.selected_id:
            self.reason_box.value = ""
        self.selected_id = company_id
        self._oauth_question = None
        self._opt_out_offered_for = None
        self._opt_out_question = None
        self._sync_selection()
        self._render_panel()

    def show_message(self, text: str, kind: str = "info") -> None:
        """Show ``text`` in the message area; ``kind`` is info, success or error."""
        self.messages.append((kind, text))
        self.output.value = render.message(kind, text)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the console is closed (last registered runs first)."""
        self._closers.append(callback)

    def close(self) -> None:
        """Run the close callbacks, such as stopping the callback receiver."""
        while self._closers:
            self._closers.pop()()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]

    # -- rendering --------------------------------------------------------------

    def _render_list(self) -> None:
        state = self.state_filter.value
        search = self.search.value.strip()
        companies = self.manager.list_companies(
            None if state == ALL_STATES else state, search or None
        )
        listed = companies[:MAX_ROWS]
        self.company_table.value = render.company_table(listed, len(companies))
        self._syncing_list = True
        try:
            self.company_select.options = [(f"{c.id} | {c.name}", c.id) for c in listed]
        finally:
            self._syncing_list = False
        self._sync_selection()

    def _sync_selection(self) -> None:
        """Highlight the selected company in the list, if the filter shows it."""
        listed = {value for _, value in self.company_select.options}
        self._syncing_list = True
        try:
            self.company_select.value = (
                self.selected_id if self.selected_id in listed else None
            )
        finally:
            self._syncing_list = False

    def _render_panel(self) -> None:
        if self.selected_id is None:
            self.panel.children = [self.no_selection_html]
            return
        try:
            company = self.manager.get_company(self.selected_id)
        except CompanyNotFound as exc:
            self.selected_id = None
            self.panel.children = [self.no_selection_html]
            self.show_message(f"{exc}.", "error")
            return

        allowed = allowed_triggers(company.state)
        self._close_stale_questions(company)
        self.summary_html.value = render.company_summary(company)
        self.badge_html.value = render.badge(company.state)
        history = self.manager.get_history(company.id, newest_first=True)
        self.history_html.value = render.history_table(history[:MAX_HISTORY_ROWS])
        self.panel.children = [
            self.summary_html,
            self._action_row(company, allowed),
            self.reason_box,
            *self._opt_in_rows(company, allowed),
            *self._opt_out_rows(company),
            self.history_heading,
            self.history_html,
        ]

    def _action_row(self, company: Company, allowed: tuple[str, ...]) -> Any:
        authorized = company.state == State.AUTHORIZED
        badge = self.badge_button if authorized else self.badge_html
        visible = [
            widget
            for trigger, widget in self._trigger_buttons().items()
            if trigger in allowed
            # An authorized company's Opt-Out appears only after a click on its
            # Authorized badge, so that it is not clicked by mistake.
            and not (trigger == "opt_out" and authorized and not self._offers_opt_out)
        ]
        self.action_row.children = [badge, *visible, self.status_button]
        return self.action_row

    @property
    def _offers_opt_out(self) -> bool:
        return self._opt_out_offered_for == self.selected_id

    def _close_stale_questions(self, company: Company) -> None:
        """Close the company's dialogs that opened before its last change."""
        if self._oauth_question and self._oauth_question.is_outdated_by(company):
            self._oauth_question = None
        if self._opt_out_question and self._opt_out_question.is_outdated_by(company):
            self._opt_out_question = None

    def _opt_in_rows(self, company: Company, allowed: tuple[str, ...]) -> list[Any]:
        rows = []
        if self._oauth_question and self._oauth_question.is_for(company):
            self.dialog_text.value = render.oauth_question(
                _label(company), "authorize" in allowed
            )
            rows.append(self.dialog)
        # "authorize" is allowed while a sign-in link is out, so a callback may come.
        if "authorize" in allowed:
            self.link_html.value = self._link_html(company)
            self.callback_note.value = render.callback_note(self.receiver_url)
            rows += [self.link_html, self.callback_note, self.callback_row]
        else:
            # A hidden widget still sends its value to the page, and the link's
            # URL carries the state of a link that is closed by now.
            self.link_html.value = ""
        return rows

    def _link_html(self, company: Company) -> str:
        link, version = self._links.get(company.id, (None, -1))
        # Any later change of the company (a newer link made elsewhere, a
        # cancel) bumped its version, so an older link would mislead.
        if link is None or version != company.version:
            return render.missing_link_note()
        return render.sign_in_link(link, company)

    def _opt_out_rows(self, company: Company) -> list[Any]:
        if not (self._opt_out_question and self._opt_out_question.is_for(company)):
            return []
        self.opt_out_text.value = render.opt_out_question(
            _label(company),
            company.access_expires_at or self._last_access_expiry(company.id),
            self.manager.store.now(),
        )
        return [self.opt_out_dialog]

    def _render_diagram(self) -> None:
        counts = self.manager.count_by_state()
        if counts == self._drawn_counts:
            return
        self.counts_html.value = render.counts_text(counts)
        text = mermaid_diagram(counts)
        markdown = render.mermaid_markdown(text)
        self.diagram.outputs = (
            {
                "output_type": "display_data",
                "data": {"text/markdown": markdown, "text/plain": text},
                "metadata": {},
            },
        )
        self._drawn_counts = counts

    # -- handler plumbing -------------------------------------------------------

    def _run(self, action: str, work: Work, *, debounce: bool = True) -> None:
        """Run ``work`` on the selected company, once at a time, and report it.

        With ``debounce``, a repeat within ``repeat_window`` after a change is
        ignored. Actions whose dialog closes on the first click pass False, so
        that a click in a newly opened dialog is never ignored as a double click.
        """
        company_id = self.selected_id
        if company_id is None:
            self.show_message(f"{action}: select a company in the list first.", "error")
            return
        key = (company_id, action)
        if key in self._busy or (debounce and self._repeated(key)):
            logger.debug("ignored a repeated %s of company %s", action, company_id)
            return

        self._busy.add(key)
        self._set_buttons_disabled(True)
        try:
            if work(company_id):
                self._changed_at[key] = time.monotonic()
                # A reason describes one change; the next one needs its own.
                self.reason_box.value = ""
        except OptinError as exc:
            logger.warning(
                "console %s of company %s failed: %s", action, company_id, exc
            )
            self.show_message(self._failure(action, company_id, exc), "error")
        except Exception as exc:
            self._record(action, company_id, exc)
        finally:
            self._busy.discard(key)
            self._set_buttons_disabled(bool(self._busy))
            self._guard("Reload", self.reload)

    def _repeated(self, key: tuple[str, str]) -> bool:
        changed_at = self._changed_at.get(key)
        return (
            changed_at is not None
            and time.monotonic() - changed_at < self.repeat_window
        )

    def _set_buttons_disabled(self, disabled: bool) -> None:
        for widget in self._action_buttons():
            widget.disabled = disabled

    def _guard(self, action: str, work: Callable[[], None]) -> None:
        """Run ``work``, which needs no company, and report what it raises."""
        try:
            work()
        except OptinError as exc:
            logger.warning("console %s failed: %s", action, exc)
            self.show_message(f"{action} failed: {exc}.", "error")
        except Exception as exc:
            self._record(action, self.selected_id, exc)

    def _failure(self, action: str, company_id: str, exc: OptinError) -> str:
        text = f"{action} failed for {self._label_of(company_id)}: {exc}."
        if isinstance(exc, InvalidTransition | ConcurrentUpdate):
            # Usually another process (CLI, receiver, sweep) changed the company
            # after its panel was drawn, and its newest history row shows which.
            text += f" {self._last_change(company_id)}"
            text += " The panel now shows the actions its current state allows."
        return text

    def _last_change(self, company_id: str) -> str:
        try:
            history = self.manager.get_history(company_id, newest_first=True)
        except OptinError:
            return ""
        if not history:
            return ""
        entry = history[0]
        return (
            f"Its last change was {entry.trigger} by {entry.actor} at "
            f"{render.when(entry.at)}."
        )

    def _record(self, action: str, company_id: str | None, exc: Exception) -> None:
        self.errors.append((action, exc))
        # The exception's text is neither logged nor shown, because an unexpected
        # error may contain a callback URL with its code, or a token.
        logger.error(
            "console action %s on company %s raised %s",
            action,
            company_id,
            type(exc).__name__,
        )
        subject = self._label_of(company_id) if company_id else "the console"
        self.show_message(
            f"{action} failed for {subject} with an unexpected {type(exc).__name__}. "
            "Click Check status to see where the company stands before you retry; "
            "the exception is kept in console.errors.",
            "error",
        )

    def _label_of(self, company_id: str) -> str:
        try:
            return _label(self.manager.get_company(company_id))
        except Exception:
            # Called while reporting another failure, which must not be hidden.
            return company_id

    def _reason(self) -> str | None:
        return self.reason_box.value.strip() or None

    def _required_reason(self, action: str, company_id: str) -> str | None:
        reason = self._reason()
        if reason is None:
            self.show_message(
                f"{action} of {self._label_of(company_id)} needs a reason: type it in "
                f"the Reason box, then click {action} again.",
                "error",
            )
        return reason

    # -- list handlers ----------------------------------------------------------

    def _on_filter_change(self, change: dict[str, Any]) -> None:
        self._guard("Search", self._render_list)

    def _on_select(self, change: dict[str, Any]) -> None:
        company_id = change["new"]
        if self._syncing_list or company_id is None:
            return
        self._guard("Select", lambda: self.select(company_id))

    # -- opt-in handlers --------------------------------------------------------

    def _on_oauth(self, _button: Any = None) -> None:
        self._run("OAuth", self._open_dialog)

    def _open_dialog(self, company_id: str) -> bool:
        self._oauth_question = self._question(company_id, "request_authorization")
        return False

    def _question(self, company_id: str, trigger: str) -> Question:
        """Open a question on ``trigger``; raise if the company's state forbids it.

        A panel drawn before another process changed the company may show a
        button that the company's state no longer allows.
        """
        company = self.manager.get_company(company_id)
        next_state(company_id, trigger, company.state)
        return Question(company.id, company.version)

    def _on_cancel_dialog(self, _button: Any = None) -> None:
        self._run("Cancel", self._close_dialog)

    def _close_dialog(self, company_id: str) -> bool:
        if self._oauth_question and self._oauth_question.company_id == company_id:
            self._oauth_question = None
            self.show_message(
                f"Opt-in of {self._label_of(company_id)} not started; nothing changed."
            )
        return False

    def _on_continue(self, _button: Any = None) -> None:
        self._run("Continue", self._begin_opt_in, debounce=False)

    def _begin_opt_in(self, company_id: str) -> bool:
        question = self._oauth_question
        if question is None or question.company_id != company_id:
            # The dialog is closed already: this is a double click's second click.
            return False
        before = self.manager.get_company(company_id)
        if not question.is_for(before):
            self._oauth_question = None
            stale = self._stale_question("Continue", "OAuth", before)
            self.show_message(stale, "error")
            return False
        link = self.manager.begin_opt_in(
            company_id, actor=self.actor, reason=self._reason()
        )
        # Closed only now, so that after a failure Continue can be clicked again.
        self._oauth_question = None
        company = self.manager.get_company(company_id)
        self._links[company_id] = (link, company.version)
        text = (
            f"Sign-in link created for {_label(company)}; it expires at "
            f"{render.when_instant(link.expires_at)}. Open it below or send it to "
            f"the admin ({company.admin_email or 'no email on file'}). "
        )
        if before.state == State.PENDING:
            text += "The earlier sign-in link no longer works. "
        self.show_message(text + render.after_sign_in(self.receiver_url), "success")
        return True

    def _stale_question(self, action: str, opened_by: str, company: Company) -> str:
        return (
            f"{action} did nothing for {_label(company)}: the company changed after "
            f"you clicked {opened_by}, so that question was closed. "
            f"{self._last_change(company.id)} It is {company.state.value} now; the "
            "panel shows the actions that state allows."
        )

    def _on_complete(self, _button: Any = None) -> None:
        url = self.callback_box.value.strip()
        # The URL contains a single-use code, which the widget state must not keep.
        self.callback_box.value = ""
        self._run("Complete", lambda company_id: self._complete_opt_in(company_id, url))

    def _complete_opt_in(self, company_id: str, url: str) -> bool:
        if not url:
            self.show_message(
                f"Paste the address the browser landed on after UPS for "
                f"{self._label_of(company_id)} into the Callback URL box, then click "
                "Complete.",
                "error",
            )
            return False
        owner = self._callback_company(url)
        if owner is not None and owner != company_id:
            return self._complete_for_other(company_id, owner, url)
        result = self.manager.complete_opt_in(
            url, actor=self.actor, reason=self._reason()
        )
        kind = "info" if result.outcome == "cancelled" else "success"
        self.show_message(f"{_label(result.company)}: {result.message}.", kind)
        return True

    def _callback_company(self, url: str) -> str | None:
        """Return the company id of the link that the callback's state names, if any."""
        try:
            return self.manager.company_for_callback(url)
        except MalformedCallback:
            # complete_opt_in raises it again, with the message to show.
            return None

    def _complete_for_other(self, selected_id: str, owner_id: str, url: str) -> bool:
        """Switch the panel to the callback's company, then complete its opt-in."""
        note = (
            f"The pasted callback belongs to {self._label_of(owner_id)}, not to the "
            f"selected {self._label_of(selected_id)}, so the panel now shows "
            f"{owner_id}. "
        )
        reason = self._reason()
        self.select(owner_id)
        try:
            result = self.manager.complete_opt_in(url, actor=self.actor, reason=reason)
        except OptinError as exc:
            logger.warning("console Complete of company %s failed: %s", owner_id, exc)
            self.show_message(note + self._failure("Complete", owner_id, exc), "error")
            return False
        kind = "info" if result.outcome == "cancelled" else "success"
        self.show_message(f"{note}{_label(result.company)}: {result.message}.", kind)
        return True

    def _on_status(self, _button: Any = None) -> None:
        self._run("Check status", self._show_status)

    def _show_status(self, company_id: str) -> bool:
        company = self.manager.get_company(company_id)
        awaiting = "authorize" in allowed_triggers(company.state)
        self.show_message(render.status_text(_label(company), company, awaiting))
        return False

    def _on_cancel_opt_in(self, _button: Any = None) -> None:
        self._run("Cancel opt-in", self._cancel_opt_in)

    def _cancel_opt_in(self, company_id: str) -> bool:
        company = self.manager.cancel_opt_in(
            company_id, actor=self.actor, reason=self._reason()
        )
        self._oauth_question = None
        self.show_message(
            f"Cancelled the opt-in of {_label(company)}: it is "
            f"{company.state.value} again, and its sign-in link no longer works.",
            "success",
        )
        return True

    # -- authorized-company handlers --------------------------------------------

    def _on_refresh(self, _button: Any = None) -> None:
        self._run("Refresh", self._refresh)

    def _refresh(self, company_id: str) -> bool:
        reason = self._required_reason("Refresh", company_id)
        if reason is None:
            return False
        company = self.manager.refresh(company_id, actor=self.actor, reason=reason)
        self.show_message(
            f"Refreshed the tokens of {_label(company)}: the access token now "
            f"expires at {render.when(company.access_expires_at)}, the refresh "
            f"token at {render.when(company.refresh_expires_at)}.",
            "success",
        )
        return True

    def _on_password_change(self, _button: Any = None) -> None:
        self._run("Record password change", self._record_password_change)

    def _record_password_change(self, company_id: str) -> bool:
        reason = self._required_reason("Record password change", company_id)
        if reason is None:
            return False
        company = self.manager.record_password_change(
            company_id, actor=self.actor, reason=reason
        )
        self.show_message(
            f"Recorded a password change for {_label(company)}: it is "
            f"{company.state.value} and its tokens were deleted. Click OAuth to "
            "opt it in again.",
            "success",
        )
        return True

    def _on_badge(self, _button: Any = None) -> None:
        self._run("Authorized", self._toggle_opt_out_offer)

    def _toggle_opt_out_offer(self, company_id: str) -> bool:
        offered = self._opt_out_offered_for == company_id
        self._opt_out_offered_for = None if offered else company_id
        self._opt_out_question = None
        return False

    def _on_opt_out(self, _button: Any = None) -> None:
        self._run("Opt-Out", self._ask_opt_out)

    def _ask_opt_out(self, company_id: str) -> bool:
        self._opt_out_question = self._question(company_id, "opt_out")
        self.show_message(
            f"Opt-Out of {self._label_of(company_id)} needs confirmation: click "
            "Confirm opt-out, or Cancel to keep the company as it is."
        )
        return False

    def _on_cancel_opt_out(self, _button: Any = None) -> None:
        self._run("Cancel opt-out", self._cancel_opt_out)

    def _cancel_opt_out(self, company_id: str) -> bool:
        self._opt_out_offered_for = None
        self._opt_out_question = None
        self.show_message(
            f"Opt-Out of {self._label_of(company_id)} cancelled; nothing changed."
        )
        return False

    def _on_confirm_opt_out(self, _button: Any = None) -> None:
        self._run("Confirm opt-out", self._opt_out, debounce=False)

    def _opt_out(self, company_id: str) -> bool:
        question = self._opt_out_question
        if question is None or question.company_id != company_id:
            # Opt-Out was not clicked first, or this is the second click of a double
            # click.
            return False
        before = self.manager.get_company(company_id)
        if not question.is_for(before):
            self._opt_out_question = None
            self.show_message(
                self._stale_question("Confirm opt-out", "Opt-Out", before), "error"
            )
            return False
        company = self.manager.opt_out(
            company_id, actor=self.actor, reason=self._reason(), confirm=True
        )
        # Closed only now, so that after a failure Confirm can be clicked again.
        self._opt_out_offered_for = None
        self._opt_out_question = None
        self.show_message(
            f"Opted out {_label(company)}: the authorization was removed and its "
            "tokens were deleted. "
            + render.no_revoke_note(
                self._last_access_expiry(company_id), self.manager.store.now()
            ),
            "success",
        )
        return True

    def _last_access_expiry(self, company_id: str) -> str | None:
        """Read when the last access token issued for the company expires.

        The opt-out row records it, and so do the rows of the authorize and
        refresh that issued it. A company that opts out without stored tokens
        may still have a live access token from before its last opt-out or
        password change, because UPS cannot revoke one.
        """
        for entry in self.manager.get_history(company_id, newest_first=True):
            if entry.trigger == "opt_out":
                until = entry.details.get("access_token_valid_at_ups_until")
            elif entry.trigger in ("authorize", "refresh"):
                until = entry.details.get("access_expires_at")
            else:
                continue
            if until:
                return str(until)
        return None


def _label(company: Company) -> str:
    return f"{company.name} ({company.id})"
