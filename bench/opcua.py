"""OPC UA data-change notifications ingested into SPC points/s: fabd's session vs a bare asyncua client.

A separate process serves an asyncua server whose variables change as fast as
it can write them; in this process, first a bare asyncua subscription with a
counting handler (the baseline), then fabd's `OpcUaSession` (profile mapping,
ProcessPoint per value, batched `sink.points`) subscribe the same variables.
Both are measured over the same window: notifications per second and
notifications per client CPU-second (the server may be the limit on wall
rate; CPU-seconds show the client's own cost).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
import time
from typing import Any

from bench.common import emit, progress, standard_args

BENCH = "opcua"
NS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(i: int) -> str:
    return f"ns={NS};s=Bench.P{i}"


def _serve(port: int, n_vars: int, ready: Any) -> None:
    """Serve n_vars Double variables that are rewritten in a tight loop (child process)."""
    logging.disable(logging.WARNING)

    async def main() -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace("urn:fabd:bench")
        assert idx == NS
        obj = await server.nodes.objects.add_object(ua.NodeId("Bench", idx), "Bench")
        nodes = [await obj.add_variable(ua.NodeId(f"Bench.P{i}", idx), f"P{i}", 0.0)
                 for i in range(n_vars)]
        ids = [n.nodeid for n in nodes]
        await server.start()
        ready.set()
        value = 0.0
        while True:
            value += 1.0
            for nid in ids:
                await server.write_attribute_value(
                    nid, ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
            await asyncio.sleep(0)

    asyncio.run(main())


class _CountingSink:
    def __init__(self) -> None:
        self.n = 0

    async def submit(self, events: list) -> None:
        pass

    def points(self, points: list) -> None:
        self.n += len(points)


async def _measure(count: Any, window_s: float, warmup_s: float) -> tuple[float, float]:
    """Return (notifications/s, notifications per CPU-second) over the window."""
    await asyncio.sleep(warmup_s)
    n0, t0, c0 = count(), time.perf_counter(), time.process_time()
    await asyncio.sleep(window_s)
    n1, t1, c1 = count(), time.perf_counter(), time.process_time()
    dn = n1 - n0
    return dn / (t1 - t0), dn / max(c1 - c0, 1e-9)


async def _baseline(url: str, n_vars: int, window_s: float, warmup_s: float
                    ) -> tuple[float, float]:
    from asyncua import Client, ua

    class Handler:
        n = 0

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            Handler.n += 1

    client = Client(url)
    await client.connect()
    try:
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = 50.0
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(50.0)
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        sub = await client.create_subscription(params, Handler())
        await sub.subscribe_data_change([client.get_node(_node(i)) for i in range(n_vars)],
                                        queuesize=100, sampling_interval=0.0)
        return await _measure(lambda: Handler.n, window_s, warmup_s)
    finally:
        await client.disconnect()


async def _fabd(url: str, n_vars: int, window_s: float, warmup_s: float) -> tuple[float, float]:
    from equipment.opcua.config import OpcUaToolConfig, ParameterNode
    from equipment.opcua.session import OpcUaSession, OpcUaSessionState

    config = OpcUaToolConfig(
        tool_id="BENCH", endpoint_url=url, publishing_interval_ms=50.0, queue_size=100,
        parameters=[ParameterNode(node_id=_node(i), parameter=f"p{i}") for i in range(n_vars)])
    sink = _CountingSink()
    session = OpcUaSession(config, sink)
    task = asyncio.create_task(session.run(), name="opcua[BENCH]")
    try:
        await session.wait_state(OpcUaSessionState.CONNECTED, timeout_s=30)
        return await _measure(lambda: sink.n, window_s, warmup_s)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    def extra(p: Any) -> None:
        p.add_argument("--vars", type=int, default=100, help="variables on the server")
        p.add_argument("--window", type=float, default=0.0, help="seconds per measurement")

    args = standard_args(BENCH, argv, extra)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    window_s = args.window or (1.5 if args.quick else 8.0)
    warmup_s = 0.5 if args.quick else 1.5
    rounds = 1 if args.quick else 2
    port = _free_port()
    url = f"opc.tcp://127.0.0.1:{port}/bench"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(port, args.vars, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the bench OPC UA server did not start")
        best: dict[str, tuple[float, float]] = {"base": (0.0, 0.0), "fabd": (0.0, 0.0)}
        for r in range(rounds):
            for name, fn in (("base", _baseline), ("fabd", _fabd)):
                progress(f"opcua round {r + 1}/{rounds}: {name}, {args.vars} variables, "
                         f"{window_s:.1f} s window")
                rate, per_cpu = asyncio.run(asyncio.wait_for(
                    fn(url, args.vars, window_s, warmup_s), window_s + warmup_s + 60))
                progress(f"  {name}: {rate:,.0f} notifications/s, {per_cpu:,.0f} per CPU-s")
                best[name] = (max(best[name][0], rate), max(best[name][1], per_cpu))
    finally:
        server.terminate()
        server.join(10)
    base, fabd = best["base"], best["fabd"]
    emit(BENCH, "datachange_to_spc_points_per_s", fabd[0], "1/s",
         "asyncua bare subscription handler", base[0], as_json=args.json)
    emit(BENCH, "datachange_to_spc_points_per_cpu_s", fabd[1], "1/cpu_s",
         "asyncua bare subscription handler", base[1], as_json=args.json)
    return 0
