"""MQTT messages ingested into SPC points/s: fabd's MqttSession vs a bare aiomqtt receive loop.

The bench starts its own mosquitto on a free port. For each contender it
registers a persistent QoS 1 session, preloads the broker with N JSON sensor
messages (50 tools, 3 values each) while the contender is away, then connects
the contender and times how fast it drains the backlog: the bare loop only
counts `client.messages`; fabd decodes with msgspec, maps topic and fields and
hands ProcessPoints to the sink. Both use the same library underneath, so the
ratio is fabd's own overhead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit, progress, standard_args

BENCH = "mqtt"
TOOLS = 50
VALUES_PER_MESSAGE = 3


class Broker:
    """A private mosquitto on a free port, with unlimited queues for persistent sessions."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="fabd-bench-mqtt-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 "persistence false", "max_queued_messages 0", "max_inflight_messages 0",
                 "max_queued_bytes 0"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: see {self.workdir / 'mosquitto.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("mosquitto did not start")

    def stop(self) -> None:
        """Stop mosquitto and remove its work dir."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _preload(port: int, n: int) -> None:
    """Publish n QoS 1 sensor messages and wait until the broker has them all."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        pending = []
        for i in range(n):
            tool = i % TOOLS
            payload = (f'{{"temp": {400 + (i % 97) * 0.1:.1f}, "pressure": {12 + (i % 13) * 0.01:.2f},'
                       f' "rf_w": {1200 + i % 31}, "lot": "L{i // 1000}", "ts": {1.7e9 + i}}}')
            pending.append(client.publish(f"fab/sensors/T{tool:03d}/data", payload, qos=1))
            if len(pending) == 1000:  # in chunks: paho's outgoing queue stays small
                for info in pending:
                    info.wait_for_publish(60)
                pending.clear()
        for info in pending:
            info.wait_for_publish(60)
    finally:
        client.loop_stop()
        client.disconnect()


async def _register(port: int, client_id: str) -> None:
    """Create the persistent session (subscription) the backlog will be queued for."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                              clean_session=False) as client:
        await client.subscribe("fab/sensors/+/data", qos=1)


async def _bare(port: int, client_id: str, n: int) -> float:
    import aiomqtt

    t0 = time.perf_counter()
    got = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                              clean_session=False) as client:
        await client.subscribe("fab/sensors/+/data", qos=1, timeout=300)
        async for _message in client.messages:
            got += 1
            if got == n:
                break
    return n / (time.perf_counter() - t0)


class _CountingSink:
    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.done = asyncio.Event()

    async def submit(self, events: list) -> None:
        pass

    def points(self, points: list) -> None:
        self.n += len(points)
        if self.n >= self.target:
            self.done.set()


async def _fabd(port: int, client_id: str, n: int) -> float:
    from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
    from equipment.mqtt.session import MqttSession

    config = MqttBrokerConfig(
        broker_id="bench", port=port, client_id=client_id,
        subscriptions=[TopicMapping(topic="fab/sensors/{tool_id}/data",
                                    values={"temp": "temp_c", "pressure": "pressure_torr",
                                            "rf_w": "rf_power_w"},
                                    lot_field="lot", ts_field="ts")])
    sink = _CountingSink(n * VALUES_PER_MESSAGE)
    t0 = time.perf_counter()
    session = MqttSession(config, sink)
    task = asyncio.create_task(session.run(), name="mqtt[bench]")
    try:
        await sink.done.wait()
        return n / (time.perf_counter() - t0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    def extra(p: Any) -> None:
        p.add_argument("--messages", type=int, default=0, help="messages per contender")

    args = standard_args(BENCH, argv, extra)
    n = args.messages or (5_000 if args.quick else 100_000)
    rounds = 1 if args.quick else 2
    broker = Broker()
    broker.start()
    best = {"bare": 0.0, "fabd": 0.0}
    try:
        for r in range(rounds):
            for name, fn in (("bare", _bare), ("fabd", _fabd)):
                client_id = f"bench-{name}-{r}"
                asyncio.run(_register(broker.port, client_id))
                progress(f"mqtt round {r + 1}/{rounds}: preloading {n:,} QoS 1 messages for "
                         f"{name}")
                _preload(broker.port, n)
                rate = asyncio.run(asyncio.wait_for(fn(broker.port, client_id, n), 300))
                progress(f"  {name}: {rate:,.0f} messages/s drained")
                best[name] = max(best[name], rate)
    finally:
        broker.stop()
    emit(BENCH, "messages_to_spc_points_per_s", best["fabd"], "1/s", "aiomqtt bare receive loop",
         best["bare"], as_json=args.json)
    return 0
