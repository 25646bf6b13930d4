"""JSON control API under ``/_sandbox/`` for tests and demos.

It creates users and clients, changes passwords, queues faults, moves the sandbox
clock, and reads the request log, grants and signing keys.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import ControlError
from .settings import SandboxSettings, validate_redirect_uri
from .state import FAULT_ENDPOINTS, Client, Fault, User, request_state

logger = logging.getLogger(__name__)

FAULT_STATUSES = (400, 401, 403, 429, 500, 502, 503)
MAX_FAULT_DELAY = 600.0


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ControlError(400, "request body must be a JSON object")
    return body


def _text_field(body: Mapping[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise ControlError(400, f"{name!r} must be a non-empty string")
    return value


def _number_field(
    body: Mapping[str, Any], name: str, default: float, minimum: float
) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(400, f"{name!r} must be a number")
    if value < minimum:
        raise ControlError(400, f"{name!r} must be at least {minimum}")
    return float(value)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def create_user(request: Request) -> Response:
    body = await _json_object(request)
    user = User(
        username=_text_field(body, "username"),
        email=_text_field(body, "email"),
        password=_text_field(body, "password"),
    )
    request_state(request).add_user(user)
    logger.info("Created user %s", user.username)
    return JSONResponse({"username": user.username, "email": user.email}, 201)


async def change_password(request: Request) -> Response:
    state = request_state(request)
    login = request.path_params["login"]
    user = state.find_user(login)
    if user is None:
        raise ControlError(404, f"no user with username or email {login!r}")
    password = _text_field(await _json_object(request), "password")
    grants, codes = state.change_password(user, password)
    logger.info("Changed password of %s and revoked %d grants", user.username, grants)
    body = {"username": user.username, "grants_revoked": grants, "codes_revoked": codes}
    return JSONResponse(body)


def _parse_client(body: Mapping[str, Any]) -> Client:
    uris = body.get("redirect_uris")
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ControlError(400, "'redirect_uris' must be a list of strings")
    for uri in uris:
        try:
            validate_redirect_uri(uri)
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
    blocked = body.get("blocked", False)
    if not isinstance(blocked, bool):
        raise ControlError(400, "'blocked' must be true or false")
    client_id = _text_field(body, "client_id")
    return Client(
        client_id=client_id,
        client_secret=_text_field(body, "client_secret"),
        redirect_uris=tuple(uris),
        name=_text_field(body, "name", default=client_id),
        blocked=blocked,
    )


async def register_client(request: Request) -> Response:
    client = _parse_client(await _json_object(request))
    replaced = request_state(request).register_client(client)
    logger.info("Registered client %s (replaced: %s)", client.client_id, replaced)
    body = {
        "client_id": client.client_id,
        "name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "blocked": client.blocked,
        "replaced": replaced,
    }
    return JSONResponse(body, 200 if replaced else 201)


def _parse_fault(body: Mapping[str, Any], settings: SandboxSettings) -> Fault:
    endpoint = body.get("endpoint")
    if endpoint not in FAULT_ENDPOINTS:
        raise ControlError(400, f"'endpoint' must be one of {list(FAULT_ENDPOINTS)}")
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ControlError(400, "'count' must be a positive integer")
    kinds = [k for k in ("status", "delay", "drop_after_commit") if body.get(k)]
    if len(kinds) != 1:
        raise ControlError(
            400, "set exactly one of 'status', 'delay' and 'drop_after_commit'"
        )
    fault = Fault(endpoint=endpoint, kind="status", remaining=count)
    if kinds[0] == "status":
        if body["status"] not in FAULT_STATUSES:
            raise ControlError(400, f"'status' must be one of {list(FAULT_STATUSES)}")
        fault.status = int(body["status"])
        message = body.get("message", "")
        if not isinstance(message, str):
            raise ControlError(400, "'message' must be a string")
        fault.message = message
    elif kinds[0] == "delay":
        fault.kind = "delay"
        fault.delay = _number_field(body, "delay", 0.0, 0.0)
        if fault.delay > MAX_FAULT_DELAY:
            raise ControlError(400, f"'delay' must be at most {MAX_FAULT_DELAY} s")
    else:
        if endpoint == "authorize":
            raise ControlError(400, "drop_after_commit applies to token and refresh")
        fault.kind = "drop"
        fault.hang = _number_field(body, "hang", settings.drop_hang, 0.0)
    return fault


def _describe_fault(fault: Fault) -> dict[str, Any]:
    return dataclasses.asdict(fault)


async def add_fault(request: Request) -> Response:
    state = request_state(request)
    fault = _parse_fault(await _json_object(request), state.settings)
    state.faults.append(fault)
    logger.info(
        "Queued %s fault for %d %s requests",
        fault.kind,
        fault.remaining,
        fault.endpoint,
    )
    return JSONResponse(_describe_fault(fault), 201)


async def list_faults(request: Request) -> Response:
    return JSONResponse([_describe_fault(f) for f in request_state(request).faults])


async def clear_faults(request: Request) -> Response:
    state = request_state(request)
    cleared = len(state.faults)
    state.faults.clear()
    return JSONResponse({"cleared": cleared})


async def advance_clock(request: Request) -> Response:
    state = request_state(request)
    seconds = _number_field(await _json_object(request), "advance", 0.0, 0.0)
    state.advance_clock(seconds)
    return JSONResponse({"now": state.now(), "offset": state.clock_offset})


async def list_requests(request: Request) -> Response:
    records = [dataclasses.asdict(r) for r in request_state(request).requests]
    return JSONResponse(records)


async def clear_requests(request: Request) -> Response:
    state = request_state(request)
    cleared = len(state.requests)
    state.requests.clear()
    return JSONResponse({"cleared": cleared})


async def list_grants(request: Request) -> Response:
    return JSONResponse([g.describe() for g in request_state(request).grants.values()])


async def introspect(request: Request) -> Response:
    token = _text_field(await _json_object(request), "access_token")
    return JSONResponse(request_state(request).introspect(token))


async def jwks(request: Request) -> Response:
    return JSONResponse(request_state(request).signer.jwks())


async def reset(request: Request) -> Response:
    request_state(request).reset()
    logger.info("Reset the sandbox to its initial state")
    return JSONResponse({"status": "reset"})
