"""Drive UPS.com-style sign-in pages over HTTP as a browser would.

The demo and the tests use it against the loopback sandbox. It follows the
authorize redirect, fills in the login (username or email), ticks the
Confidentiality Agreement, clicks Continue, enters the password and allows
consent. It returns the callback URL that the browser is sent to. It is for
the sandbox only, so never point it at a real UPS host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx


@dataclass
class Form:
    action: str
    method: str = "post"
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.error_text: list[str] = []
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(
                Form(values.get("action", ""), values.get("method", "post"))
            )
        elif tag == "input" and self.forms and values.get("type") == "hidden":
            self.forms[-1].fields[values.get("name", "")] = values.get("value", "")
        if "error" in values.get("class", "").split():
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error and data.strip():
            self.error_text.append(data.strip())


class SignInError(RuntimeError):
    pass


def _form_of(response: httpx.Response, step: str) -> Form:
    parser = _FormParser()
    parser.feed(response.text)
    if not parser.forms:
        shown = " ".join(parser.error_text) or f"HTTP {response.status_code}"
        raise SignInError(f"sign-in step {step!r} found no form: {shown}")
    if parser.error_text:
        raise SignInError(
            f"sign-in step {step!r} failed: {' '.join(parser.error_text)}"
        )
    return parser.forms[0]


def _submit(
    http: httpx.Client, page: httpx.Response, step: str, values: dict[str, str]
) -> httpx.Response:
    form = _form_of(page, step)
    target = urljoin(str(page.url), form.action or str(page.url))
    return http.post(target, data={**form.fields, **values})


def sign_in(
    http: httpx.Client,
    authorization_url: str,
    login: str,
    password: str,
    allow: bool = True,
) -> str:
    """Sign in at the sandbox and return the callback URL it redirects to.

    ``http`` must not follow redirects, so that the callback is returned
    rather than fetched.
    """
    response = http.get(authorization_url)
    while (
        response.status_code in (302, 303) and "/lasso/" in response.headers["location"]
    ):
        response = http.get(urljoin(str(response.url), response.headers["location"]))
    if response.status_code != 200:
        raise SignInError(
            f"authorize returned HTTP {response.status_code}: {response.text}"
        )

    response = _submit(http, response, "login", {"userid": login, "agreement": "yes"})
    response = _submit(http, response, "password", {"password": password})
    decision = "allow" if allow else "deny"
    response = _submit(http, response, "consent", {"decision": decision})
    if response.status_code not in (302, 303):
        _form_of(response, "consent")  # raises with the page's error text
        raise SignInError(f"consent returned HTTP {response.status_code}")
    return urljoin(str(response.url), response.headers["location"])
