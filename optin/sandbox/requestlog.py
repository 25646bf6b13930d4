"""ASGI middleware that fills the request log with each OAuth request."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .faults import DROPPED_SCOPE_KEY
from .oauth import FORM_CONTENT_TYPE, is_oauth_path
from .state import RequestRecord, SandboxState


def _field_names(text: str) -> list[str]:
    return [name for name, _ in parse_qsl(text, keep_blank_values=True)]


def _make_record(
    scope: Scope, started: float, body: bytes, status: int | None
) -> RequestRecord:
    headers = Headers(scope=scope)
    content_type = headers.get("content-type")
    form_fields: list[str] = []
    if content_type and content_type.lower().startswith(FORM_CONTENT_TYPE):
        form_fields = _field_names(body.decode("utf-8", "replace"))
    authorization = headers.get("authorization", "")
    return RequestRecord(
        time=started,
        method=scope["method"],
        path=scope["path"],
        status=status,
        dropped=bool(scope.get(DROPPED_SCOPE_KEY)),
        basic_auth=authorization.lower().startswith("basic "),
        content_type=content_type,
        query_fields=_field_names(scope["query_string"].decode("latin-1")),
        form_fields=form_fields,
    )


class RequestLogMiddleware:
    """ASGI middleware that records each request under ``/security``.

    Records keep parameter names and never values, so the log contains no codes,
    tokens or secrets.
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_oauth_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status: int | None = None
        started = self.state.now()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            record = _make_record(scope, started, bytes(body), status)
            self.state.record_request(record)
