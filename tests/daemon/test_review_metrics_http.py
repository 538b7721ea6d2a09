"""The HTTP endpoint under clients that misbehave: one that stops reading its response."""

import asyncio
import gc
import socket
import struct

import pytest
from prometheus_client import REGISTRY, Gauge

from daemon import config
from daemon import http as http_mod
from daemon.app import App
from daemon.http import HttpEndpoint
from daemon.sdnotify import Notifier
from tests.support import eventually, free_port

_TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of our end (tcpi_state, the first byte of TCP_INFO)."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


@pytest.fixture
async def endpoint():
    cfg = config.loads(f'[http]\nlisten = "127.0.0.1:{free_port()}"\n[tick]\ninterval_s = 0.05\n')
    app = App(cfg, notifier=Notifier({}))
    # A /status page far larger than what the kernel and the transport buffer for one client.
    http = HttpEndpoint(app, status=lambda: {"pad": "x" * 32_000_000})
    await http.start()
    task = asyncio.create_task(http.run())
    yield http
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_client_that_stops_reading_is_hung_up_on(endpoint, monkeypatch):
    monkeypatch.setattr(http_mod, "_SEND_TIMEOUT_S", 0.5)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", endpoint.bound_port))
        await loop.sock_sendall(sock, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: a scraper wedged mid-response. The daemon must not keep the socket
        # (and the response buffered for it) for ever.
        await eventually(lambda: tcp_state(sock) != _TCP_ESTABLISHED, timeout_s=10,
                         what="the daemon hangs up on a client that does not read")
    finally:
        sock.close()
    # And it still serves everyone else.
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.bound_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ")


async def test_a_large_metrics_page_does_not_stall_the_event_loop(endpoint):
    # A fab-sized page (1,443 tools x the per-tool families, a histogram per route step):
    # while it is produced, HSMS replies, the tick and every other request wait on the loop.
    pads = [Gauge(f"fabd_test_review_pad_{i}", "padding", ["tool"], registry=REGISTRY)
            for i in range(60)]
    try:
        for g in pads:
            for t in range(1000):
                g.labels(f"TOOL_{t:04d}").set(t)
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        worst_gap_s = 0.0

        async def heartbeat() -> None:
            nonlocal worst_gap_s
            while not done.is_set():
                t0 = loop.time()
                await asyncio.sleep(0.002)
                worst_gap_s = max(worst_gap_s, loop.time() - t0)

        # A full garbage collection stops the loop whatever runs (its length is the heap's,
        # not the endpoint's): keep it out of the measurement.
        gc.disable()
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.05)
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.bound_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 60)
        scrape_s = loop.time() - t0
        writer.close()
        done.set()
        await beat
    finally:
        gc.enable()
        for g in pads:
            REGISTRY.unregister(g)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b'fabd_test_review_pad_59{tool="TOOL_0999"} 999.0' in data
    # The page took a while; the loop never stopped for more than a small part of it.
    assert worst_gap_s < scrape_s / 4, (worst_gap_s, scrape_s)
