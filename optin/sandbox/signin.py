"""Routes of the UPS.com sign-in pages that the authorize endpoint redirects to.

A user goes through three forms: username or email with the agreement checkbox,
password, then consent. The HTML of each page comes from ``pages``.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import pages
from .state import (
    AuthorizeRequest,
    LoginSession,
    SandboxState,
    User,
    request_state,
)

logger = logging.getLogger(__name__)

SIGNIN_PATH = "/lasso/signin"


def _message_page(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(pages.message_page(title=title, message=message), status)


def _expired_session_page(step: str) -> HTMLResponse:
    logger.info("Rejected a %s form with an unknown or expired session", step)
    return _message_page(
        400,
        "Sign-in session expired",
        "This sign-in session is invalid or has expired. "
        "Start again from the application.",
    )


def _client_redirect(redirect_uri: str, params: list[tuple[str, str]]) -> Response:
    """Redirect to the client's redirect URI with ``params`` added to its query."""
    if "?" not in redirect_uri:
        separator = "?"
    elif redirect_uri.endswith(("?", "&")):
        separator = ""
    else:
        separator = "&"
    return RedirectResponse(
        f"{redirect_uri}{separator}{urlencode(params)}", status_code=302
    )


def _denied_redirect(authorize: AuthorizeRequest) -> Response:
    params = [("error", "access_denied")]
    if authorize.state is not None:
        params.append(("state", authorize.state))
    return _client_redirect(authorize.redirect_uri, params)


def _form_text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def signin_form(request: Request) -> Response:
    """Show step 1 for the authorize request that matches the query parameters."""
    state = request_state(request)
    params = request.query_params
    key = (
        params.get("client_id", ""),
        params.get("redirect_uri", ""),
        params.get("state"),
        params.get("scope") or "read",
    )
    authorize = state.find_authorize_request(key)
    client = state.clients.get(key[0])
    if authorize is None or client is None or params.get("response_type") != "code":
        logger.info("Rejected sign-in link for client %s: no matching request", key[0])
        return _message_page(
            400,
            "Sign-in link not valid",
            "No authorization request matches this sign-in link. "
            "Start again from the application.",
        )
    session = state.start_login_session(authorize)
    page = pages.signin_page(login_session=session.session_id, client_name=client.name)
    return HTMLResponse(page)


def _client_name(state: SandboxState, session: LoginSession) -> str:
    client = state.clients.get(session.request.client_id)
    return client.name if client is not None else session.request.client_id


def _check_signin(
    state: SandboxState, userid: str, agreement: str
) -> tuple[User | None, str]:
    """Return the user that the sign-in form names, or None and the error to show."""
    if agreement != "yes":
        return None, "You must accept the UPS Confidentiality Agreement to continue."
    if not userid:
        return None, "Enter your UPS.com username or email address."
    user = state.find_user(userid)
    if user is None:
        return None, "No UPS.com account matches this username or email address."
    return user, ""


async def signin_submit(request: Request) -> Response:
    """Check the agreement and the username or email, then show the password page."""
    state = request_state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "userid")
    if session is None:
        return _expired_session_page("sign-in")
    if _form_text(form, "action") == "cancel":
        state.end_login_session(session)
        return _denied_redirect(session.request)
    userid = _form_text(form, "userid").strip()
    user, error = _check_signin(state, userid, _form_text(form, "agreement"))
    if user is None:
        logger.info(
            "Rejected sign-in for client %s: %s", session.request.client_id, error
        )
        page = pages.signin_page(
            login_session=session.session_id,
            client_name=_client_name(state, session),
            userid=userid,
            error=error,
        )
        return HTMLResponse(page)
    session.username = user.username
    session.step = "password"
    page = pages.password_page(login_session=session.session_id, login=user.username)
    return HTMLResponse(page)


async def password_submit(request: Request) -> Response:
    """Check the password, then show the consent page."""
    state = request_state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "password")
    user = state.find_user(session.username or "") if session is not None else None
    if session is None or user is None:
        return _expired_session_page("password")
    password = _form_text(form, "password")
    if not hmac.compare_digest(password.encode(), user.password.encode()):
        logger.info("Wrong password for user %s", user.username)
        page = pages.password_page(
            login_session=session.session_id,
            login=user.username,
            error="The password is incorrect. Try again.",
        )
        return HTMLResponse(page)
    session.step = "consent"
    page = pages.consent_page(
        login_session=session.session_id,
        client_name=_client_name(state, session),
        login=user.username,
        scope=session.request.scope,
    )
    return HTMLResponse(page)


async def consent_submit(request: Request) -> Response:
    """Redirect to the client with a code on Allow, or with access_denied on Deny."""
    state = request_state(request)
    form = await request.form()
    session = state.find_login_session(_form_text(form, "login_session"), "consent")
    if session is None or session.username is None:
        return _expired_session_page("consent")
    decision = _form_text(form, "decision")
    if decision not in ("allow", "deny"):
        logger.info("Rejected consent decision %r", decision)
        return _message_page(400, "Choose Allow or Deny", "Choose Allow or Deny.")
    state.end_login_session(session)
    authorize = session.request
    if decision == "deny":
        logger.info("User %s denied client %s", session.username, authorize.client_id)
        return _denied_redirect(authorize)
    code = state.issue_code(authorize, session.username)
    params = [("code", code), ("scope", authorize.scope)]
    if authorize.state is not None:
        params.append(("state", authorize.state))
    return _client_redirect(authorize.redirect_uri, params)
