"""Run an ASGI app with uvicorn in a background thread, on loopback by default."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

LOOPBACK = "127.0.0.1"


def require_extra(module: str, extra: str = "server") -> Any:
    """Import an optional dependency, or raise ImportError naming the extra."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{module} is not installed; install optin with the '{extra}' extra: "
            f"pip install 'optin[{extra}]'"
        ) from None


def check_loopback(host: str, allow_remote: bool) -> None:
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to listen on host={host!r}: only loopback addresses are "
            "allowed unless allow_remote=True (CLI: --allow-remote)"
        )


class ThreadedServer:
    """A uvicorn server on a thread; ``port=0`` picks a free port."""

    def __init__(self, app: Any, host: str = LOOPBACK, port: int = 0) -> None:
        uvicorn = require_extra("uvicorn")
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        # No access log: callback URLs in it would contain authorization codes.
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, wait: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + wait
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start in {wait} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
