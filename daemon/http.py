"""A small asyncio HTTP endpoint: /metrics, /healthz, /readyz and /status (JSON for `fabd status`).

Read-only, GET only, one request per connection: enough for Prometheus and a
load balancer probe, with no web framework in the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric

from daemon.app import App

log = logging.getLogger("fabd.http")

Response = tuple[int, str, bytes]
Handler = Callable[[], Awaitable[Response]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            503: "Service Unavailable"}
_MAX_REQUEST_BYTES = 8192
_READ_TIMEOUT_S = 5.0  # to receive the request head
_SEND_TIMEOUT_S = 10.0  # to hand the response to a client that stopped reading


class _Collected:
    """Families already read from the registry, in the shape generate_latest() walks."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class HttpEndpoint:
    """Serves the daemon's HTTP routes on config.http.listen."""

    def __init__(self, app: App, status: Callable[[], dict] | None = None) -> None:
        self.app = app
        self._status = status or (lambda: {})
        self.routes: dict[str, Handler] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/status": self._status_json,
        }
        self.bound_port: int | None = None
        self.started = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind the listening socket (a warm-up: probes work as soon as READY is sent)."""
        if self._server is not None:
            return
        cfg = self.app.config.http
        self._server = await asyncio.start_server(self._handle, cfg.host, cfg.port,
                                                  reuse_address=True)
        self.bound_port = self._server.sockets[0].getsockname()[1]
        log.info("HTTP on http://%s:%d (/metrics /healthz /readyz /status)", cfg.host,
                 self.bound_port)
        self.started.set()

    async def run(self) -> None:
        """Serve until cancelled (binding first if start() was not called)."""
        await self.start()
        assert self._server is not None
        server, self._server = self._server, None
        async with server:
            await server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sending = False
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                resp: Response = (405, "text/plain", b"GET only\n")
            elif path in self.routes:
                resp = await self.routes[path]()
            else:
                resp = (404, "text/plain", b"not found; try /metrics /healthz /readyz /status\n")
            code, ctype, body = resp
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            sending = True
            async with asyncio.timeout(_SEND_TIMEOUT_S):
                await writer.drain()
                writer.close()  # waits for the rest of the buffer to go out
                await writer.wait_closed()
            sending = False
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass  # a slow, malformed or oversized request: hang up, as for any bad client
        finally:
            if sending:
                # A client that stopped reading its response (or a cancelled handler): a plain
                # close would wait for it to read the rest, holding the socket and the buffered
                # response for ever; reset the connection instead (SO_LINGER 0: the kernel
                # drops what it still holds for the client too, rather than keep trying).
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _metrics(self) -> Response:
        # A fab-sized page (per-tool and per-step families) takes a CPU-half-second to
        # produce; in one piece on the loop it would stall HSMS replies and the tick that
        # long at every scrape. Each family is read on the loop (one consistent reading: the
        # tick's gauge step clears and refills families on the loop too), yielding between
        # families; the text is then formatted from those frozen readings on a thread.
        families: list[Metric] = []
        for family in REGISTRY.collect():
            families.append(family)
            await asyncio.sleep(0)
        body = await asyncio.to_thread(generate_latest, _Collected(families))
        return 200, CONTENT_TYPE_LATEST, body

    async def _healthz(self) -> Response:
        ok, why = self.app.healthy()
        return (200 if ok else 503), "text/plain", f"{why}\n".encode()

    async def _readyz(self) -> Response:
        ok, parts = await self.app.readiness()
        return (200 if ok else 503), "application/json", json.dumps(parts).encode() + b"\n"

    async def _status_json(self) -> Response:
        ok, why = self.app.healthy()
        ready, parts = await self.app.readiness()
        tick = self.app.tick
        body = {
            "healthy": ok, "health": why, "ready": ready, "readiness": parts,
            "started_at": self.app.started_at,
            "tick": {"count": tick.count, "last_duration_s": tick.last_duration_s,
                     "overruns": tick.overruns, "interval_s": tick.interval_s} if tick else {},
            "components": [{"name": c.name, "restarts": c.restarts}
                           for c in self.app.components],
        }
        body.update(self._status())
        return 200, "application/json", json.dumps(body, default=str).encode() + b"\n"
