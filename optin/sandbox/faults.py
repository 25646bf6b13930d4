"""Injection of the faults that the control API queues for the OAuth endpoints."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .errors import OAuthError, fault_error
from .state import ConnectionDropper, Fault, FaultEndpoint, SandboxState

logger = logging.getLogger(__name__)

# Scope key that marks a request whose response a drop_after_commit fault withheld.
DROPPED_SCOPE_KEY = "optin.sandbox.dropped"


async def apply_fault(state: SandboxState, endpoint: FaultEndpoint) -> Fault | None:
    """Apply the next queued fault for ``endpoint`` and return it.

    A status fault raises its OAuthError before the endpoint does any work. A delay
    fault sleeps in real time, not on the sandbox clock. A drop fault is returned
    for ``finish_response`` to apply after the work is done.
    """
    fault = state.take_fault(endpoint)
    if fault is None:
        return None
    logger.info("Applying %s fault to the %s endpoint", fault.kind, endpoint)
    if fault.kind == "status":
        raise fault_error(fault.status, fault.message)
    if fault.kind == "delay":
        await asyncio.sleep(fault.delay)
    return fault


class DroppedResponse(Response):
    """Response that closes the connection instead of sending anything.

    It needs the ``ConnectionDropper`` that ``SandboxServer`` installs. Without
    one, or when the connection is not found, it waits ``hang`` seconds, so that
    the client times out, and then sends a 504 envelope.
    """

    def __init__(self, dropper: ConnectionDropper | None, hang: float) -> None:
        super().__init__(status_code=504)
        self._dropper = dropper
        self._hang = hang

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[DROPPED_SCOPE_KEY] = True
        client = scope.get("client")
        dropper = self._dropper
        if dropper is not None and client and dropper((client[0], client[1])):
            await _wait_for_disconnect(receive)
            return
        logger.warning(
            "Cannot close the connection of client %s; delaying the response by %s s",
            client,
            self._hang,
        )
        await asyncio.sleep(self._hang)
        error = OAuthError(504, "10504", "Response dropped by a sandbox fault")
        try:
            await error.to_response()(scope, receive, send)
        except (ClientDisconnect, OSError):
            logger.info("Client %s disconnected before the delayed response", client)


async def _wait_for_disconnect(receive: Receive) -> None:
    """Wait until the server reports the closed connection.

    Returning earlier would make uvicorn send a 500, because it would still
    consider the connection open.
    """
    try:
        async with asyncio.timeout(5):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        logger.warning("Server did not report the dropped connection within 5 s")


def finish_response(
    state: SandboxState, fault: Fault | None, response: Response
) -> Response:
    """Return ``response``, or a ``DroppedResponse`` under a drop fault.

    A drop fault withholds the response whatever its status, because the endpoint
    has already done its work (consumed the code or rotated the token).
    """
    if fault is None or fault.kind != "drop":
        return response
    logger.info("Dropping a %s response as a fault requested", response.status_code)
    return DroppedResponse(state.drop_connection, fault.hang)
