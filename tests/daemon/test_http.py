"""Metrics and health endpoints: a Prometheus-valid page, /healthz and /readyz that mean it."""

import asyncio
import logging
import shutil
import subprocess

import pytest

from daemon import config
from daemon.app import App
from daemon.http import HttpEndpoint
from daemon.sdnotify import Notifier
from tests.support import eventually, free_port


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def running_app():
    cfg = config.loads(f'[http]\nlisten = "127.0.0.1:{free_port()}"\n[tick]\ninterval_s = 0.05\n')
    app = App(cfg, notifier=Notifier({}))
    http = HttpEndpoint(app)
    app.add_component("http", http.run)
    redis_ok = {"value": False}
    app.add_readiness_check("redis", lambda: redis_ok["value"])
    task = asyncio.create_task(app.run())
    await eventually(lambda: http.started.is_set() and app.tick.count > 0)
    yield app, http.bound_port, redis_ok
    app.request_stop()
    await task


async def test_metrics_page_passes_promtool(running_app):
    _, port, _ = running_app
    status, body = await get(port, "/metrics")
    assert status == 200
    text = body.decode()
    assert "fabd_tick_duration_seconds_bucket" in text
    assert "fabd_tick_overruns_total" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make test` installs Debian's prometheus package")
    res = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


async def test_readyz_reflects_each_check_and_healthz_the_tick(running_app):
    _, port, redis_ok = running_app
    status, body = await get(port, "/readyz")
    assert status == 503 and b'"redis": false' in body
    redis_ok["value"] = True
    status, _ = await get(port, "/readyz")
    assert status == 200
    status, _ = await get(port, "/healthz")
    assert status == 200
    status, body = await get(port, "/status")
    assert status == 200 and b'"ready": true' in body
    status, _ = await get(port, "/nope")
    assert status == 404


async def test_healthz_fails_when_the_tick_is_stale(running_app):
    app, port, _ = running_app
    # Simulate a stuck loop: last tick long ago.
    app.tick.last_completed_monotonic -= 60
    status, body = await get(port, "/healthz")
    assert status == 503 and b"stale" in body


async def test_an_oversized_request_is_refused_without_an_error_in_the_log(running_app, caplog):
    _, port, _ = running_app
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /" + b"a" * 100_000)  # no end of header within the reader's limit
    await writer.drain()
    with caplog.at_level(logging.ERROR):
        await reader.read()
        writer.close()
        status, _ = await get(port, "/healthz")  # still serving, and the handler has finished
    assert status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
