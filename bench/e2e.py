"""The whole daemon under an SMT2020-sized load: farm → HSMS/GEM → store → Redis, latency and cost.

One fabd (App + FabCore, this process) holds a GEM host session to every tool
of an equipment farm (another process, `python -m equipment.sim.farm`), each
tool sending S6F11 collection events at `--rate` per second. Every event goes
the production path: decode, driver profile, state of record, group commit
(S6F12 only after it), outbox, Redis. A probe process reads the stream and
measures event time → visible in Redis. Reported against same-run baselines:
the farm's offered rate, and its own S6F11 → S6F12 round trip.

The farm's load events are ProcessCompleted reports for lots the MES does not
know, so each becomes one `process_unexpected` state change; their parameters
are not charted (SPC throughput is `python -m bench spc`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit, progress, standard_args


def _extra(p) -> None:
    p.add_argument("--tools", type=int, default=1443, help="tools on the farm (SMT2020: 1443)")
    p.add_argument("--rate", type=float, default=5.0, help="S6F11 per second per tool")
    p.add_argument("--seconds", type=float, default=60.0, help="measured run length")
    p.add_argument("--probe", default="", help=argparse_hidden())
    p.add_argument("--stream", default="fab:equipment", help=argparse_hidden())


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def probe(url: str, stream: str, seconds: float) -> int:
    """Read `stream` from now on for `seconds`; print count and event-time → Redis latencies."""
    import redis

    client = redis.Redis.from_url(url)
    last = "$"
    lat: list[float] = []
    end = time.time() + seconds
    print(json.dumps({"probe": "ready"}), flush=True)
    while time.time() < end:
        resp = client.xread({stream: last}, count=5000, block=200)
        now = time.time()
        for _name, entries in resp or []:
            for entry_id, fields in entries:
                last = entry_id
                ts = dt.datetime.fromisoformat(fields[b"ts"].decode()).timestamp()
                lat.append(now - ts)
    print(json.dumps({"count": len(lat), "p50_s": _pct(lat, 0.5), "p99_s": _pct(lat, 0.99),
                      "seconds": seconds}), flush=True)
    return 0


async def _run(args) -> dict:
    import msgspec

    from daemon import assemble
    from daemon import config as config_mod
    from daemon.localsvc import RedisServer, free_port
    from equipment.gem.config import GemToolConfig
    from equipment.hsms.config import HsmsConfig

    quiet = ("daemon.mes", "fabd.hsms", "equipment", "fabd.gem", "daemon.relay")
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="fabd-bench-e2e-"))
    redis_server = RedisServer(tmp)
    farm = probe_proc = daemon = app = None
    try:
        redis_server.start()
        progress(f"starting the equipment farm: {args.tools} tools at {args.rate:g} S6F11/s each")
        farm = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "equipment.sim.farm", "--tools", str(args.tools),
            "--rate", str(args.rate), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        ports = json.loads(await farm.stdout.readline())["ports"]

        async def farm_cmd(cmd: str) -> dict:
            farm.stdin.write(cmd.encode() + b"\n")
            await farm.stdin.drain()
            return json.loads(await farm.stdout.readline())

        cfg = config_mod.loads(
            f'[service]\nstate_directory = "{tmp}/state"\ncache_directory = "{tmp}/cache"\n'
            f'log_level = "WARNING"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[redis]\nurl = "{redis_server.url}"\n[store]\nsynchronous = "NORMAL"\n',
            source="bench-e2e")
        (tmp / "state").mkdir()
        tools = [GemToolConfig(tool_id=f"SIM{i:04d}", request_spooled=False,
                               hsms=HsmsConfig(host="127.0.0.1", port=port, mode="active",
                                               t5_connect_separation_s=1.0))
                 for i, port in enumerate(ports)]
        cfg = msgspec.structs.replace(cfg, equipment=msgspec.structs.replace(cfg.equipment,
                                                                             hsms=tools))
        app, core = assemble.build(cfg)
        ticks: list[float] = []
        app.tick.after_tick(lambda: ticks.append(app.tick.last_duration_s))
        daemon = asyncio.create_task(app.run(), name="fabd")
        t0 = time.monotonic()
        while not app.ready:  # noqa: ASYNC110 - App exposes a flag, polling it is fine in a bench
            await asyncio.sleep(0.2)
        progress(f"fabd ready in {time.monotonic() - t0:.1f}s; waiting for {len(tools)} GEM "
                 "start-ups")
        while True:
            up = sum(1 for s in core.sessions.values() if s.state.communicating)
            if up == len(tools) or time.monotonic() - t0 > 300:
                break
            await asyncio.sleep(1.0)
        progress(f"{up}/{len(tools)} tools communicating after {time.monotonic() - t0:.1f}s; "
                 "warming up 5s")
        await asyncio.sleep(5.0)
        probe_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.e2e", "--probe", redis_server.url, "--seconds",
            str(args.seconds), stdout=asyncio.subprocess.PIPE)
        await probe_proc.stdout.readline()
        await farm_cmd("reset")
        ticks.clear()
        rss0, cpu0, w0 = _rss_mb(), _cpu_s(), time.monotonic()
        rss_samples = []
        while time.monotonic() - w0 < args.seconds:
            await asyncio.sleep(1.0)
            rss_samples.append(_rss_mb())
            if len(rss_samples) % 10 == 0:
                progress(f"{len(rss_samples)}s: rss {rss_samples[-1]:.0f} MB, outbox "
                         f"{core.bus.relay.depth}")
        wall = time.monotonic() - w0
        cpu = _cpu_s() - cpu0
        stats = await farm_cmd("stats")
        probe_out = json.loads((await probe_proc.stdout.readline()).decode())
        await probe_proc.wait()
        app.request_stop("bench over")
        await daemon
        return {"wall_s": wall, "cpu_s": cpu, "stats": stats, "probe": probe_out, "ticks": ticks,
                "rss0": rss0, "rss": rss_samples, "tools_up": up}
    finally:
        # whatever happened (an error, an interrupt): stop every process this run started
        if probe_proc is not None and probe_proc.returncode is None:
            probe_proc.kill()
            await probe_proc.wait()
        if daemon is not None and not daemon.done():
            app.request_stop("bench ended")
            try:
                await asyncio.wait_for(daemon, 30)
            except BaseException:  # the run is over either way; cleanup goes on
                daemon.cancel()
        if farm is not None and farm.returncode is None:
            try:
                farm.stdin.write(b"quit\n")
                await farm.stdin.drain()
                await asyncio.wait_for(farm.wait(), 30)
            except BaseException:
                farm.kill()
                await farm.wait()
        redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        for name, level in levels.items():   # run in-process (tests): leave logging as it was
            logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = standard_args("e2e", argv, _extra)
    if args.probe:
        return probe(args.probe, args.stream, args.seconds)
    if args.quick:
        args.tools, args.seconds = min(args.tools, 40), min(args.seconds, 8.0)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "fabd-numba"))
    from daemon import runner

    r = runner.run(_run(args), "uvloop")
    s, p = r["stats"], r["probe"]
    half = len(r["rss"]) // 2
    growth = (sum(r["rss"][half:]) / max(1, len(r["rss"]) - half)
              - sum(r["rss"][:half]) / max(1, half)) if r["rss"] else 0.0
    j = args.json
    emit("e2e", "events_to_redis_per_s", p["count"] / p["seconds"], "events/s",
         "farm_s6f11_acked_per_s", s["acked_per_s"], as_json=j)
    emit("e2e", "event_to_redis_p50_ms", p["p50_s"] * 1e3, "ms", "farm_s6f11_to_s6f12_p50_ms",
         s["p50_ms"], lower_is_better=True, as_json=j)
    emit("e2e", "event_to_redis_p99_ms", p["p99_s"] * 1e3, "ms", "farm_s6f11_to_s6f12_p99_ms",
         s["p99_ms"], lower_is_better=True, as_json=j)
    emit("e2e", "tick_p99_ms", _pct(r["ticks"], 0.99) * 1e3, "ms", "tick_interval_ms", 1000.0,
         lower_is_better=True, as_json=j)
    emit("e2e", "cpu_cores_used", r["cpu_s"] / r["wall_s"], "cores", "one_core", 1.0,
         lower_is_better=True, as_json=j)
    emit("e2e", "rss_growth_mb", growth, "MB", "rss_at_start_mb", r["rss0"],
         lower_is_better=True, as_json=j)
    progress(f"{r['tools_up']} tools up; farm sent {s['sent']} acked {s['acked']} "
             f"failed {s['failed']}; probe saw {p['count']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
