"""Parsing of the URL that UPS redirects the admin's browser to."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from optin.errors import MalformedCallback
from optin.secret import Secret


@dataclass(frozen=True, repr=False)
class CallbackParams:
    url: str
    state: str
    code: Secret | None
    error: str | None
    scope: str | None

    def __repr__(self) -> str:
        return f"CallbackParams(error={self.error!r}, scope={self.scope!r})"


def parse_callback(url: str) -> CallbackParams:
    """Read ``state``, ``code`` and ``error`` from a callback URL (or its query).

    The query is percent-decoded once, so a code holding ``+``, ``/`` and
    ``=`` (sent as ``%2B``, ``%2F``, ``%3D``) comes back intact. A literal
    ``+`` left unencoded by a browser or a copy-paste is kept as ``+``, not
    read as a space, because UPS codes are base64 and contain no spaces.
    """
    text = (url or "").strip()
    if not text:
        raise MalformedCallback("the callback URL is empty; paste the full address")
    query = urlsplit(text).query if "?" in text or "://" in text else text
    # Protect literal '+' from form-decoding into a space.
    fields = parse_qs(query.replace("+", "%2B"), keep_blank_values=True)
    state = _single(fields, "state")
    if not state:
        raise MalformedCallback(
            "the callback URL has no state parameter; paste the whole address the "
            "browser landed on after UPS, including everything after '?'"
        )
    code = _single(fields, "code")
    error = _single(fields, "error")
    if not code and not error:
        raise MalformedCallback(
            "the callback URL has neither code nor error; paste the whole address "
            "the browser landed on after UPS"
        )
    return CallbackParams(
        url=text,
        state=state,
        code=Secret(code) if code else None,
        error=error or None,
        scope=_single(fields, "scope"),
    )


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(set(values)) > 1:
        raise MalformedCallback(
            f"the callback URL repeats {name} with different values; paste the "
            "address exactly as the browser showed it"
        )
    return values[0]
