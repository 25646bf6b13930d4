"""HTML for the sandbox's UPS.com sign-in pages.

The pages are plain forms without JavaScript, so that a browser and a script that
posts forms with httpx follow the same steps. Every value placed in the HTML goes
through ``html.escape``. Form errors appear in an element with ``id="error"``.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body { font-family: sans-serif; margin: 0; background: #f4f1ec; color: #222; }
header { background: #351c15; color: #ffb500; padding: 0.8em 1.5em; }
main { max-width: 32em; margin: 2em auto; background: #fff; padding: 1.5em 2em;
       border-radius: 6px; box-shadow: 0 1px 4px rgba(0, 0, 0, 0.2); }
label { display: block; margin: 0.8em 0 0.3em; }
input[type=text], input[type=password] { width: 100%; padding: 0.4em;
       box-sizing: border-box; }
.checkbox { display: flex; gap: 0.5em; align-items: flex-start; }
.checkbox label { margin: 0; }
.error { color: #b00020; border: 1px solid #b00020; padding: 0.5em; }
.actions { margin-top: 1.2em; display: flex; gap: 0.8em; }
button { padding: 0.5em 1.4em; }
"""


def _layout(title: str, heading: str, body: str) -> str:
    """Wrap ``body`` in a full HTML page. ``title`` and ``heading`` are escaped."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<header>UPS sandbox: a local test double of UPS.com, not ups.com</header>\n"
        f"<main>\n<h1>{escape(heading)}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _error_block(error: str | None) -> str:
    if error is None:
        return ""
    return f'<p class="error" id="error" role="alert">{escape(error)}</p>\n'


def _session_input(login_session: str) -> str:
    return (
        '<input type="hidden" name="login_session" '
        f'value="{escape(login_session, quote=True)}">\n'
    )


def signin_page(
    *,
    login_session: str,
    client_name: str,
    userid: str = "",
    error: str | None = None,
) -> str:
    """Render step 1: the UPS.com username or email and the agreement checkbox."""
    body = (
        f"<p>{escape(client_name)} wants to connect to your UPS.com account.</p>\n"
        f"{_error_block(error)}"
        '<form method="post" action="/lasso/signin">\n'
        f"{_session_input(login_session)}"
        '<label for="userid">UPS.com username or email</label>\n'
        '<input type="text" name="userid" id="userid" autocomplete="username" '
        f'value="{escape(userid, quote=True)}">\n'
        '<p class="checkbox">\n'
        '<input type="checkbox" name="agreement" id="agreement" value="yes">\n'
        '<label for="agreement">I accept the UPS Confidentiality Agreement.</label>\n'
        "</p>\n"
        '<p class="actions">\n'
        '<button type="submit" name="action" value="continue" id="continue">'
        "Continue</button>\n"
        '<button type="submit" name="action" value="cancel" id="cancel">'
        "Cancel</button>\n"
        "</p>\n</form>"
    )
    return _layout("Log In | UPS sandbox", "Log in to UPS.com", body)


def password_page(*, login_session: str, login: str, error: str | None = None) -> str:
    """Render step 2: the password of the account chosen in step 1."""
    body = (
        f'<p>Signing in as <strong id="login">{escape(login)}</strong>.</p>\n'
        f"{_error_block(error)}"
        '<form method="post" action="/lasso/password">\n'
        f"{_session_input(login_session)}"
        '<label for="password">Password</label>\n'
        '<input type="password" name="password" id="password" '
        'autocomplete="current-password">\n'
        '<p class="actions">\n'
        '<button type="submit" id="signin">Sign In</button>\n'
        "</p>\n</form>"
    )
    return _layout("Enter Password | UPS sandbox", "Enter your password", body)


def consent_page(
    *, login_session: str, client_name: str, login: str, scope: str
) -> str:
    """Render step 3: allow or deny the application access to the account."""
    body = (
        f'<p><strong id="application">{escape(client_name)}</strong> requests '
        f"access to the UPS.com account <strong>{escape(login)}</strong> "
        f"with scope <code>{escape(scope)}</code>.</p>\n"
        '<form method="post" action="/lasso/consent">\n'
        f"{_session_input(login_session)}"
        '<p class="actions">\n'
        '<button type="submit" name="decision" value="allow" id="allow">'
        "Allow</button>\n"
        '<button type="submit" name="decision" value="deny" id="deny">'
        "Deny</button>\n"
        "</p>\n</form>"
    )
    return _layout("Authorize Application | UPS sandbox", "Authorize access", body)


def message_page(*, title: str, message: str) -> str:
    """Render a page that shows one message, such as an expired sign-in session."""
    body = f'<p class="error" id="error" role="alert">{escape(message)}</p>'
    return _layout(f"{title} | UPS sandbox", title, body)
