"""Run the sandbox app with uvicorn on a loopback address.

``SandboxServer`` runs uvicorn in a background thread for tests and demos, and
``serve`` runs it in the foreground for the ``optin sandbox`` command.

Both use an h11 protocol subclass that records each connection's transport. A
``drop_after_commit`` fault uses it to close the connection after the endpoint did
its work and before any byte of the response is sent, so the client sees the
server disconnect without a response (httpx raises ``RemoteProtocolError``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from types import TracebackType

import httpx
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import SandboxSettings, create_app, sandbox_state

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ConnectionRegistry:
    """Open connections of one server, keyed by the client's (host, port)."""

    def __init__(self) -> None:
        self._transports: dict[tuple[str, int], asyncio.Transport] = {}

    def add(self, client: tuple[str, int], transport: asyncio.Transport) -> None:
        self._transports[client] = transport

    def discard(self, client: tuple[str, int], transport: asyncio.Transport) -> None:
        if self._transports.get(client) is transport:
            del self._transports[client]

    def close(self, client: tuple[str, int]) -> bool:
        """Close the client's connection without a response.

        Returns False if no open connection has this address. Must run on the
        server's event loop thread.
        """
        transport = self._transports.get(client)
        if transport is None or transport.is_closing():
            return False
        transport.close()
        logger.info("Closed the connection of %s:%d without a response", *client)
        return True


def _protocol_class(registry: ConnectionRegistry) -> type[H11Protocol]:
    """Return an h11 protocol class that registers its connections."""

    class RegisteredH11Protocol(H11Protocol):
        def connection_made(  # type: ignore[override]
            self, transport: asyncio.Transport
        ) -> None:
            super().connection_made(transport)
            if self.client is not None:
                registry.add(self.client, transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client is not None:
                registry.discard(self.client, self.transport)
            super().connection_lost(exc)

    return RegisteredH11Protocol


def _server_config(app: Starlette, **options: object) -> uvicorn.Config:
    """Build a uvicorn config whose connections the app can drop."""
    registry = ConnectionRegistry()
    sandbox_state(app).drop_connection = registry.close
    return uvicorn.Config(
        app,
        http=_protocol_class(registry),
        lifespan="off",
        # Forwarded headers would replace the client address that the registry
        # is keyed by.
        proxy_headers=False,
        **options,  # type: ignore[arg-type]
    )


def _bind_loopback(port: int) -> socket.socket:
    # With proto IPPROTO_TCP (not the default 0), asyncio sets TCP_NODELAY on the
    # accepted connections. Without it, Nagle's algorithm delays each response on a
    # kept-alive connection by about 40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if port != 0:
            # Allows a restart on the same port while old connections are in
            # TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


class SandboxServer:
    """Sandbox app served by uvicorn on 127.0.0.1 in a background thread.

    ``port=0`` binds a free port; ``url`` gives the address after ``start``.
    Use it as a context manager, or call ``start`` and ``stop``.
    """

    def __init__(self, port: int = 0, settings: SandboxSettings | None = None) -> None:
        self.app = create_app(settings)
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, such as ``http://127.0.0.1:54321``, without a trailing slash."""
        if self._port is None:
            raise RuntimeError("the sandbox server has not been started")
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> SandboxServer:
        """Start serving and wait until ``/_sandbox/health`` responds.

        Raises RuntimeError if the server does not respond within ``timeout``
        seconds, and OSError if the port cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        sock = _bind_loopback(self._requested_port)
        self._port = sock.getsockname()[1]
        config = _server_config(
            self.app,
            log_level="warning",
            log_config=None,
            access_log=False,
            # Lets stop() end requests held by delay or drop faults.
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"optin-sandbox-{self._port}",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("Sandbox listening on %s", self.url)
        return self

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health_url = f"{self.url}/_sandbox/health"
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise RuntimeError("the sandbox server thread exited at start")
                try:
                    if client.get(health_url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"the sandbox at {self.url} did not respond in {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for its thread. Does nothing if not running."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "Sandbox on %s did not stop in %s s; forcing", self.url, timeout
            )
            server.force_exit = True
            thread.join(timeout)
        self._server = None
        self._thread = None
        logger.info("Sandbox on %s stopped", self.url)

    def __enter__(self) -> SandboxServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_sandbox(
    port: int = 0, settings: SandboxSettings | None = None
) -> SandboxServer:
    """Start a sandbox on 127.0.0.1 in a background thread and return it."""
    return SandboxServer(port, settings).start()


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = LOOPBACK,
    port: int = 8765,
    settings: SandboxSettings | None = None,
    *,
    allow_remote: bool = False,
) -> None:
    """Serve the sandbox in the foreground until interrupted.

    Raises ValueError for a host that is not a loopback address, unless
    ``allow_remote`` is true, because the sandbox has no real authentication.
    """
    if not allow_remote and not is_loopback_host(host):
        raise ValueError(
            f"host {host!r} is not a loopback address; use 127.0.0.1, or pass "
            "allow_remote=True to expose the sandbox to other machines"
        )
    config = _server_config(create_app(settings), host=host, port=port)
    logger.info("Starting the UPS sandbox on http://%s:%d", host, port)
    uvicorn.Server(config).run()
