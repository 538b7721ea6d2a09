"""HSMS host at fab scale: 1,443 sessions vs the equipment farm, S6F11 rate per CPU-second and p99 ack latency, vs a secsgem pair."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import textwrap
import time

from bench.common import emit, progress, standard_args
from equipment.hsms import HsmsActive, HsmsConfig, HsmsSession, HsmsState, Message
from equipment.secs import B

BENCH = "hsms"
SMT2020_TOOLS = 1443


def _cpu_s() -> float:
    """Return this process's CPU time (user + system, all threads)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- baseline: a secsgem host <-> secsgem equipment pair ----------------------------------------

_SECSGEM_EQUIPMENT = textwrap.dedent("""
    import json, sys, time
    import secsgem.common, secsgem.gem, secsgem.hsms
    from secsgem.gem.communication_state_machine import CommunicationState
    from secsgem.secs import variables as sv
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    eq = secsgem.gem.GemEquipmentHandler(secsgem.hsms.HsmsSettings(
        address="127.0.0.1", port=port, connect_mode=secsgem.hsms.HsmsConnectMode.PASSIVE,
        device_type=secsgem.common.DeviceType.EQUIPMENT))
    eq.enable()
    print(json.dumps({"port": port}), flush=True)
    deadline = time.monotonic() + 30
    while eq.communication_state.current != CommunicationState.COMMUNICATING:
        if time.monotonic() > deadline:
            sys.exit("secsgem pair never communicated")
        time.sleep(0.01)
    def values(k):
        return [sv.String("LOT-00001"), sv.String("RCP-ETCH-01"), sv.F8(350.1 + k), sv.F8(13.3),
                sv.F8(1200.0), sv.F8(97.5), sv.U1(0), sv.U4(25), sv.String("productive"),
                sv.Boolean(True)]
    lat = []
    n = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        f = eq.stream_function(6, 11)({"DATAID": n, "CEID": 3002, "RPT": [
            {"RPTID": 100, "V": values(n)}, {"RPTID": 101, "V": values(n)}]})
        t0 = time.perf_counter()
        if eq.send_and_waitfor_response(f) is not None:
            lat.append(time.perf_counter() - t0)
        n += 1
    lat.sort()
    print(json.dumps({"acked": len(lat), "seconds": seconds,
                      "p99_ms": lat[int(0.99 * len(lat))] * 1e3 if lat else float("nan")}),
          flush=True)
    eq.disable()
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_secsgem_pair(seconds: float) -> dict:
    """Measure a secsgem host acknowledging S6F11 from one secsgem equipment, as fast as it goes."""
    import secsgem.common
    import secsgem.gem
    import secsgem.hsms

    port = _free_port()
    eq = subprocess.Popen([sys.executable, "-c", _SECSGEM_EQUIPMENT, str(port), str(seconds)],
                          stdout=subprocess.PIPE, text=True)
    try:
        json.loads(eq.stdout.readline())
        host = secsgem.gem.GemHostHandler(secsgem.hsms.HsmsSettings(
            address="127.0.0.1", port=port, connect_mode=secsgem.hsms.HsmsConnectMode.ACTIVE,
            device_type=secsgem.common.DeviceType.HOST))
        ids = list(range(2001, 2011))
        host.report_subscriptions[100] = ids
        host.report_subscriptions[101] = ids
        cpu0 = _cpu_s()
        host.enable()
        result = json.loads(eq.stdout.readline())
        cpu = _cpu_s() - cpu0
        host.disable()
    finally:
        with contextlib.suppress(Exception):
            eq.wait(10)
        eq.kill()
    result["host_cpu_s"] = cpu
    result["per_cpu_s"] = result["acked"] / cpu if cpu else 0.0
    result["rate"] = result["acked"] / result["seconds"]
    return result


# --- fabd: our HSMS host (or the GEM host session) against the farm -----------------------------


class _Farm:
    """The equipment farm in a child process, driven over its stdin/stdout line protocol."""

    def __init__(self, tools: int, rate_hz: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "equipment.sim.farm", "--tools", str(tools), "--rate",
             str(rate_hz), "--process-time", "3600", "--log-level", "ERROR"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports: list[int] = []

    async def ready(self) -> list[int]:
        line = await asyncio.to_thread(self.proc.stdout.readline)
        self.ports = json.loads(line)["ports"]
        return self.ports

    async def command(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(await asyncio.to_thread(self.proc.stdout.readline))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        self.proc.kill()


class _AckCounter:
    """The minimal host handler: the body is already decoded by the transport; ack S6F11."""

    def __init__(self) -> None:
        self.acked = 0
        self.values = 0

    def handler(self, session: HsmsSession, msg: Message) -> None:
        if msg.stream == 6 and msg.function == 11:
            self.values += len(msg.body[2])  # touch the decoded reports
            session.reply_nowait(msg, B(b"\x00"))
            self.acked += 1
        elif msg.wbit:
            session.send_s9(5, msg.header)


class _CountingSink:
    """An EventSink that is durable at once and counts what it was handed."""

    def __init__(self) -> None:
        self.acked = 0
        self.events = 0

    async def submit(self, events: list) -> None:
        self.acked += 1
        self.events += len(events)

    def points(self, points: list) -> None:
        pass


async def run_fabd(mode: str, tools: int, rate_hz: float, warmup_s: float, window_s: float
                   ) -> dict:
    """Hold `tools` host sessions against the farm and measure a steady window."""
    farm = _Farm(tools, rate_hz)
    endpoints: list = []
    tasks: list[asyncio.Task] = []
    try:
        ports = await farm.ready()
        progress(f"farm up: {tools} tools; connecting {mode} host sessions")
        cfg = dict(t3_reply_timeout_s=45.0, t5_connect_separation_s=1.0, linktest_interval_s=30.0)
        if mode == "hsms":
            counter = _AckCounter()
            for i, port in enumerate(ports):
                ep = HsmsActive(f"SIM{i:04d}", HsmsConfig(port=port, **cfg), counter.handler)
                endpoints.append(ep)
                tasks.append(asyncio.create_task(ep.run(), name=f"hsms[SIM{i:04d}]"))

            def selected() -> int:
                return sum(1 for ep in endpoints if ep.state is HsmsState.SELECTED)

            def acked() -> int:
                return counter.acked
        else:
            from equipment.gem import GemHostSession, GemToolConfig

            sink = _CountingSink()
            for i, port in enumerate(ports):
                gcfg = GemToolConfig(tool_id=f"SIM{i:04d}", hsms=HsmsConfig(port=port, **cfg),
                                     comm_retry_s=1.0, spool_settle_s=0.05)
                session = GemHostSession(gcfg, sink)
                endpoints.append(session)
                tasks.append(asyncio.create_task(session.run(), name=f"gem[SIM{i:04d}]"))

            def selected() -> int:
                return sum(1 for s in endpoints if s.state.communicating)

            def acked() -> int:
                return sink.acked
        t0 = time.monotonic()
        while selected() < tools:
            if time.monotonic() - t0 > 120:
                break
            await asyncio.sleep(0.5)
            progress(f"{selected()}/{tools} sessions up")
        up = selected()
        progress(f"{up}/{tools} up after {time.monotonic() - t0:.1f} s; warm-up {warmup_s:g} s")
        await asyncio.sleep(warmup_s)
        await farm.command("reset")
        farm_cpu0 = (await farm.command("stats"))["cpu_s"]
        a0, c0, w0 = acked(), _cpu_s(), time.monotonic()
        deadline = w0 + window_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(5.0, deadline - time.monotonic()))
            progress(f"measuring: {acked() - a0} S6F11 acknowledged in "
                     f"{time.monotonic() - w0:.0f}/{window_s:g} s")
        a1, c1, w1 = acked(), _cpu_s(), time.monotonic()
        stats = await farm.command("stats")
        events = a1 - a0
        cpu = c1 - c0
        stats["cpu_share"] = (stats["cpu_s"] - farm_cpu0) / (w1 - w0)
        stats["cpu_us_per_event"] = (stats["cpu_s"] - farm_cpu0) / max(1, stats["acked"]) * 1e6
        return {"mode": mode, "sessions": up,
                "host_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "acked": events, "seconds": w1 - w0,
                "rate": events / (w1 - w0), "host_cpu_s": cpu,
                "per_cpu_s": events / cpu if cpu else 0.0, "cpu_share": cpu / (w1 - w0),
                "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"], "farm": stats}
    finally:
        for ep in endpoints:
            if hasattr(ep, "stop"):
                ep.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        farm.close()


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tools", type=int, default=None, help=f"sessions (default {SMT2020_TOOLS})")
    p.add_argument("--rate", type=float, default=5.0, help="S6F11 per second per tool")
    p.add_argument("--seconds", type=float, default=None, help="measured window")
    p.add_argument("--host", choices=["hsms", "gem", "both"], default=None,
                   help="minimal HSMS ack handler, the GEM host session, or both")
    p.add_argument("--no-uvloop", action="store_true")


def main(argv: list[str] | None = None) -> int:
    args = standard_args(BENCH, argv, _extra)
    quick = args.quick
    tools = args.tools or (50 if quick else SMT2020_TOOLS)
    window = args.seconds or (3.0 if quick else 30.0)
    warmup = 1.0 if quick else 5.0
    modes = {"hsms": ["hsms"], "gem": ["gem"], "both": ["hsms", "gem"]}[
        args.host or ("hsms" if quick else "both")]
    _raise_nofile()
    progress(f"baseline: secsgem host <-> secsgem equipment, {2.0 if quick else 10.0:g} s")
    base = run_secsgem_pair(2.0 if quick else 10.0)
    progress(f"secsgem pair: {base['rate']:.0f} S6F11/s, {base['per_cpu_s']:.0f} per host "
             f"CPU-second, p99 {base['p99_ms']:.1f} ms")
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    for mode in modes:
        res = asyncio.run(run_fabd(mode, tools, args.rate, warmup, window))
        progress(json.dumps({k: v for k, v in res.items() if k != "farm"}))
        progress(f"farm: {res['farm']['sent']} sent, CPU share {res['farm']['cpu_share']:.2f}, "
                 f"{res['farm']['cpu_us_per_event']:.0f} µs CPU per event")
        tag = "" if mode == "hsms" else "_gem"
        emit(BENCH, f"s6f11_per_host_cpu_s{tag}", res["per_cpu_s"], "msg/cpu-s",
             "secsgem host<->equipment pair, per host CPU-second", base["per_cpu_s"],
             as_json=args.json)
        emit(BENCH, f"s6f11_rate{tag}", res["rate"], "msg/s",
             "secsgem pair (one session, back to back)", base["rate"], as_json=args.json)
        emit(BENCH, f"s6f11_ack_p99_ms{tag}", res["p99_ms"], "ms",
             "secsgem pair p99 send->S6F12", base["p99_ms"], lower_is_better=True,
             as_json=args.json)
        emit(BENCH, f"sessions_selected{tag}", res["sessions"], "sessions",
             "sessions asked for", tools, as_json=args.json)
    return 0
