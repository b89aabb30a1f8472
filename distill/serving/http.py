"""An ASGI app on a uvicorn server in a background thread: the one way distill runs a local server.

`distill serve` (the student over the OpenAI API) and `distill review --serve` (the review page)
both start one: `with ThreadedServer(app, host, port, "distill serve") as s: s.port`. Port 0 picks a free
port; `start()` returns once the socket listens (or raises, naming the host); `wait()` blocks until
Ctrl-C; leaving the block stops the server. lifespan is off and access logs are not written (a
request line may carry a token).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from distill.errors import InputError


class ThreadedServer:
    def __init__(self, app: Any, host: str, port: int, what: str):
        import uvicorn

        self.host, self.what = host, what
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="distill-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def origin(self) -> str:
        """http://HOST:PORT, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Any:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise InputError(f"{self.what} did not start on {self.host} (is the port in use?)")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
