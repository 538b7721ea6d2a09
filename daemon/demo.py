"""`fabd demo`: a simulated fab running end to end over real sockets, with a live view.

What runs, all in this process except Redis and Mosquitto:

- SECS/GEM tools: secsgem equipment simulators on HSMS ports on 127.0.0.1
  (fabd holds one host session per tool, exactly as in production);
- OPC UA tools: asyncua servers; MQTT sensors publishing to a private mosquitto;
- fabd itself (`daemon.core.FabCore` in an `App`), with its store in a
  temporary state directory and its streams on Redis (a local redis-server is
  started on a free port when none is reachable);
- an "ERP" that sends master data and releases lots on `fab:erp:commands`,
  and an "engineer" who releases lots that SPC put on hold;
- scripted faults: a process shift that SPC catches (the lot is held, then
  released), a tool that goes down and comes back.

Ctrl-C stops it cleanly; so does the end of `--duration`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("fabd.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tools", type=int, default=20, help="simulated tools (min 20)")
    parser.add_argument("--duration", type=float, default=180.0,
                        help="seconds to run (default %(default)s)")
    parser.add_argument("--speed", type=float, default=20.0,
                        help="time acceleration: process times are divided by this")
    parser.add_argument("--lots", type=int, default=0,
                        help="lots the ERP releases (default: enough to fill the run)")
    parser.add_argument("--redis-url", default="",
                        help="use this Redis (default: start a private redis-server on a free port)")
    parser.add_argument("--metrics", default="127.0.0.1:9464", metavar="HOST:PORT",
                        help="where /metrics and /status listen (a free port if taken)")
    parser.add_argument("--state-dir", default="", help="keep the store here (default: temp)")
    parser.add_argument("--no-view", action="store_true",
                        help="print a line per interval instead of the refreshing table")
    parser.add_argument("--fab", choices=["synthetic", "smt2020"], default="synthetic",
                        help="synthetic (20+ tools, every protocol) or smt2020 (the HVLM "
                        "reference fab, 1,443 tools on the equipment farm)")
    parser.add_argument("--dataset", default=str(_default_dataset()),
                        help="SMT2020 dataset directory for --fab smt2020 (default %(default)s)")
    parser.add_argument("--seed", type=int, default=7)


def run(args: argparse.Namespace) -> int:
    from daemon import log as logsetup
    from daemon import runner

    logsetup.setup("WARNING" if not args.no_view else "INFO")
    for noisy in ("equipment.sim", "communication", "hsms_communication", "asyncua"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return runner.run(Demo(args).run(), "uvloop")
    except KeyboardInterrupt:
        return 130


def say(msg: str) -> None:
    """Progress for the person at the terminal."""
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


class Demo:
    """Sets up the simulated fab, runs fabd on it, drives the scenario, shows the view."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="fabd-demo-"))
        self.state_dir = Path(args.state_dir) if args.state_dir else self.tmp / "state"
        self.redis_server = None
        self.mqtt_server = None
        self.gem_sims: dict[str, Any] = {}
        self.opcua_sims: dict[str, Any] = {}
        self.app = None
        self.core = None
        self.daemon: asyncio.Task | None = None
        self.events: list[str] = []  # scenario log lines shown under the table
        self.released = 0
        self.started_at = time.monotonic()

    # -- set-up ---------------------------------------------------------------------------
    async def _redis(self) -> str:
        import redis.asyncio as aioredis

        from daemon.localsvc import RedisServer

        # A demo never writes into a Redis it merely found: it takes the one named with
        # --redis-url, or starts its own on a free port.
        if self.args.redis_url:
            url = self.args.redis_url
            client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
            try:
                await client.ping()
            except Exception as exc:
                raise SystemExit(f"fabd demo: cannot reach Redis at {url} ({exc}); start it "
                                 "or leave --redis-url out to use a private one") from None
            finally:
                await client.aclose()
            say(f"using Redis at {url}")
            return url
        if shutil.which("redis-server") is None:
            raise SystemExit("fabd demo: no Redis reachable and redis-server is not installed; "
                             "run `make demo` (it installs it) or pass --redis-url")
        self.redis_server = RedisServer(self.tmp)
        await _start_server(self.redis_server)
        say(f"started a local redis-server on port {self.redis_server.port}")
        return self.redis_server.url

    async def _mosquitto(self) -> int | None:
        from daemon.localsvc import MosquittoServer

        if shutil.which("mosquitto") is None and not _exists("/usr/sbin/mosquitto"):
            say("mosquitto not installed: running without MQTT sensors")
            return None
        self.mqtt_server = MosquittoServer(self.tmp)
        await _start_server(self.mqtt_server)
        say(f"started a private mosquitto on port {self.mqtt_server.port} for the sensors")
        return self.mqtt_server.port

    async def _start_tools(self, tools: list) -> tuple[list, list]:
        from equipment.gem.config import GemToolConfig
        from equipment.hsms.config import HsmsConfig
        from equipment.sim.gem_tool import GemToolSim, GemToolSimConfig
        from equipment.sim.opcua_tool import OpcUaToolSim, OpcUaToolSimConfig

        speed = self.args.speed
        hsms_cfgs, opcua_cfgs = [], []
        for i, t in enumerate(tools):
            ptime = t.group.process_time_s / speed
            if t.protocol == "opcua":
                sim = OpcUaToolSim(OpcUaToolSimConfig(tool_id=t.tool_id, process_time_s=ptime,
                                                      recipes=("IDLE",), seed=i))
                await sim.start()
                self.opcua_sims[t.tool_id] = sim
                opcua_cfgs.append(sim.client_profile())
            else:
                sim = GemToolSim(GemToolSimConfig(tool_id=t.tool_id, process_time_s=ptime,
                                                  recipes={}, seed=i))
                await sim.start()
                self.gem_sims[t.tool_id] = sim
                hsms_cfgs.append(GemToolConfig(
                    tool_id=t.tool_id, request_spooled=True,
                    hsms=HsmsConfig(host="127.0.0.1", port=sim.port, mode="active",
                                    t5_connect_separation_s=1.0)))
            say(f"tool {t.tool_id:8} {t.group.name:6} {t.protocol:5} up "
                f"({i + 1}/{len(tools)})")
        return hsms_cfgs, opcua_cfgs

    async def _start_farm(self):
        """The SMT2020 fab on the equipment farm (another process), one HSMS port per tool."""
        from daemon import demo_smt2020
        from equipment.gem.config import GemToolConfig
        from equipment.hsms.config import HsmsConfig

        ptime = max(0.5, 60.0 / self.args.speed)
        say(f"loading SMT2020 from {self.args.dataset}")
        plan = await asyncio.to_thread(demo_smt2020.plan, self.args.dataset, ptime)
        say(f"starting the equipment farm: {len(plan.tools)} SECS/GEM tools")
        self.farm = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "equipment.sim.farm", "--tools", str(len(plan.tools)),
            "--process-time", str(ptime), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        ports = json.loads(await self.farm.stdout.readline())["ports"]
        hsms = [GemToolConfig(tool_id=tid, request_spooled=False,
                              hsms=HsmsConfig(host="127.0.0.1", port=port, mode="active",
                                              t5_connect_separation_s=2.0))
                for (tid, _family), port in zip(plan.tools, ports, strict=True)]
        self.smt_products = plan.products
        return plan, hsms

    def _config(self, redis_url: str, hsms: list, opcua: list, mqtt_port: int | None):
        import msgspec

        from daemon import config as config_mod
        from daemon.localsvc import free_port
        from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
        from spc.config import ChartOverride, ChartSpec, Reaction, RuleParams

        host, _, port = self.args.metrics.rpartition(":")
        listen = self.args.metrics if _port_free(host, int(port)) else f"{host}:{free_port()}"
        mqtt = []
        if mqtt_port is not None:
            mqtt.append(MqttBrokerConfig(
                broker_id="sensors", host="127.0.0.1", port=mqtt_port, client_id="fabd-demo",
                subscriptions=[TopicMapping(topic="fab/sensors/{tool_id}")],
                state_topic="fab/state/{tool_id}"))
        # Thickness is the critical-to-quality parameter: known limits, a shift holds the lot.
        thickness = ChartSpec(center=120.0, sigma=0.5, tests=(1, 5), dispersion_test=False,
                              reaction=Reaction.HOLD_LOT)
        quiet = ChartSpec(tests=(1,), k=RuleParams(k1_sigma=4.0), phase_i_points=30,
                          dispersion_test=False, reaction=Reaction.NOTIFY)
        raw = {
            "service": {"state_directory": str(self.state_dir),
                        "cache_directory": str(self.tmp / "cache"), "log_level": "WARNING"},
            "http": {"listen": listen},
            "tick": {"interval_s": 0.5},
            "redis": {"url": redis_url},
            "bus": {"snapshot_interval_s": 10.0},
            "dispatch": {"mode": "auto"},
        }
        speed = self.args.speed
        cfg = config_mod.loads(_toml(raw), source="demo")
        # The policy's time constants are fab minutes: accelerate them with the process times.
        policy = msgspec.structs.replace(
            cfg.dispatch.policy, lookahead_min=0.5 / speed, qt_horizon_min=120.0 / speed,
            batch_max_wait_min=2.0 / speed, balance_target_wait_min=240.0 / speed)
        return msgspec.structs.replace(
            cfg,
            dispatch=msgspec.structs.replace(cfg.dispatch, policy=policy),
            spc=msgspec.structs.replace(cfg.spc, default=quiet, overrides=(
                ChartOverride(pattern="CVD*/Thickness_nm", spec=thickness),)),
            equipment=msgspec.structs.replace(cfg.equipment, hsms=hsms, opcua=opcua, mqtt=mqtt),
        )

    # -- scenario -------------------------------------------------------------------------
    async def _erp(self, redis_url: str, plan, n_lots: int) -> None:
        """The ERP: master data first, then lots released at a steady pace."""
        import msgspec
        import redis.asyncio as aioredis

        from daemon import demo_fab

        client = aioredis.Redis.from_url(redis_url)
        stream = "fab:erp:commands"
        enc = msgspec.json.encode
        try:
            for i in range(0, len(plan.commands), 500):
                await _xadd_many(client, stream, [{"cmd": enc(c)}
                                                  for c in plan.commands[i:i + 500]])
            self.note(f"ERP sent {len(plan.commands)} master-data commands")
            release_window_s = self.args.duration * 0.55
            gap_s = release_window_s / max(1, n_lots)
            for i in range(n_lots):
                now = dt.datetime.now(dt.UTC)
                if self.args.fab == "smt2020":
                    from daemon import demo_smt2020

                    cmd = demo_smt2020.lot_release(i, self.smt_products, now)
                else:
                    cmd = demo_fab.lot_release(i, now, self.args.speed)
                await _xadd(client, stream, {"cmd": enc(cmd)})
                self.released += 1
                if i == n_lots // 2:
                    await self._expedite(client, stream)
                await asyncio.sleep(gap_s)
            # One bad command, to show the dead-letter stream working.
            await _xadd(client, stream, {"cmd": b'{"type": "release_lot", "command_id": "demo-bad"'
                                              b', "lot_id": "NOPE", "reason": "x", "by": "erp"}'})
        finally:
            await client.aclose()

    async def _expedite(self, client, stream: str) -> None:
        """The ERP expedites a customer order: the oldest regular lot still queued becomes
        super hot (update_lot), and dispatch runs it first from the next tick."""
        import msgspec

        from daemon import events as ev

        queued = [lot for lot in self.core.bus.mes.active_lots()
                  if lot.state == "queued" and lot.priority < 80]
        if not queued:
            return
        lot = min(queued, key=lambda x: x.created_ts)
        await _xadd(client, stream, {"cmd": msgspec.json.encode(ev.UpdateLot(
            command_id=f"demo-expedite-{lot.lot_id}", lot_id=lot.lot_id,
            reason="customer expedite", by="erp-planner", priority=95))})
        self.note(f"ERP expedited {lot.lot_id} (priority {lot.priority} -> 95)")

    async def _engineer(self, redis_url: str) -> None:
        """An engineer who dispositions SPC holds: reviews, resets the tool, releases the lot."""
        import msgspec
        import redis.asyncio as aioredis

        from daemon import events as ev

        client = aioredis.Redis.from_url(redis_url)
        n = 0
        try:
            while True:
                await asyncio.sleep(2.0)
                mes = self.core.bus.mes
                for lot in list(mes.active_lots()):
                    for h in list(lot.holds):
                        if not h.reason.startswith("spc:") or time.time() - h.ts < 6.0:
                            continue
                        tool_id = h.reason.split(":", 1)[1].split("/", 1)[0]
                        sim = self.gem_sims.get(tool_id)
                        if sim is not None:
                            sim.reset_process()
                        n += 1
                        await _xadd(client, "fab:erp:commands", {"cmd": msgspec.json.encode(
                            ev.ReleaseLot(command_id=f"demo-release-{n}", lot_id=lot.lot_id,
                                          reason="engineering review: tool re-centred",
                                          by="process-engineer", hold_reason=h.reason))})
                        self.note(f"engineer released {lot.lot_id} (held by SPC on {tool_id})")
        finally:
            await client.aclose()

    async def _faults(self) -> None:
        """Scripted trouble: a thickness shift on a CVD tool, a tool down and back."""
        d = self.args.duration
        await asyncio.sleep(d * 0.25)
        cvd = next((s for tid, s in self.gem_sims.items() if tid.startswith("CVD")), None)
        if cvd is not None:
            cvd.shift("Thickness_nm", 4.0)
            self.note(f"fault: {cvd.config.tool_id} film thickness shifted +4 nm (SPC should hold)")
        await asyncio.sleep(d * 0.15)
        etch = self.gem_sims.get("ETCH02")
        if etch is not None:
            await etch.set_e10("unscheduled_down", "RF generator fault")
            self.note("fault: ETCH02 unscheduled down (RF generator fault)")
            await asyncio.sleep(max(10.0, d * 0.1))
            await etch.set_e10("standby", "repaired")
            self.note("ETCH02 repaired, back to standby")

    async def _sensors(self, port: int) -> None:
        """MQTT sensors: particle counters and DI water resistivity at the wet benches."""
        import aiomqtt

        benches = [tid for tid in self.gem_sims if tid.startswith("CLEAN")]
        async with aiomqtt.Client("127.0.0.1", port, identifier="demo-sensors") as client:
            while True:
                for tid in benches:
                    payload = {"particles_0_3um": self.rng.gauss(12, 2),
                               "di_resistivity_MOhm": self.rng.gauss(18.1, 0.05)}
                    await client.publish(f"fab/sensors/{tid}", json.dumps(payload), qos=1)
                await asyncio.sleep(0.5)

    def note(self, line: str) -> None:
        stamp = f"{time.monotonic() - self.started_at:6.1f}s"
        self.events.append(f"{stamp} {line}")
        del self.events[:-6]
        if self.args.no_view:
            say(line)

    # -- the view -------------------------------------------------------------------------
    async def _view(self) -> None:
        from prometheus_client import REGISTRY

        tty = sys.stdout.isatty() and not self.args.no_view
        last_pub, last_t = 0.0, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            pub = _metric_sum(REGISTRY, "fabd_bus_events_published_total")
            rate = (pub - last_pub) / max(1e-6, now - last_t)
            last_pub, last_t = pub, now
            st = self.core.status()
            if tty:
                print(self._table(st, rate), flush=True)
            else:
                c = st["counters"]
                print(f"[demo] t={now - self.started_at:5.0f}s lots={c['lots']} "
                      f"done={c['completed']} held={c['held']} starts={c['starts']} "
                      f"events/s={rate:.0f} outbox={c['outbox']}", flush=True)

    def _table(self, st: dict, rate: float) -> str:
        from daemon.cmd_status import _table

        c = st["counters"]
        elapsed = time.monotonic() - self.started_at
        tools = st["tools"]
        if len(tools) > 40:  # a whole fab: states by count, then the tools that are down
            states: dict[str, int] = {}
            for t in tools:
                key = t["e10"] if t["connected"] else "link down"
                states[key] = states.get(key, 0) + 1
            tools = [t for t in tools if not t["connected"] or "down" in t["e10"]][:15]
            self.events_header = "tools by E10 state: " + "  ".join(
                f"{k} {v}" for k, v in sorted(states.items()))
        rows = [[t["tool"], t["protocol"], "up" if t["connected"] else "DOWN", t["e10"],
                 t["lot"] or "-", t["inhibited"] or ""] for t in tools]
        by_step: dict[str, list[int]] = {}
        for w in st["wip"]:
            group = w["step"].split("-")[-1]
            g = by_step.setdefault(group, [0, 0])
            g[0] += w["lots"]
            g[1] += w["held"]
        wip = "  ".join(f"{k}:{v[0]}" + (f"({v[1]}H)" if v[1] else "")
                        for k, v in sorted(by_step.items()))
        head = (f"fabd demo — {elapsed:5.0f}s of {self.args.duration:.0f}s, speed "
                f"{self.args.speed:g}x   metrics: http://{self.core.config.http.listen}/metrics")
        body = [
            "\x1b[2J\x1b[H" + head,
            f"lots released {self.released}  in WIP {c['lots'] - c['completed']}  completed "
            f"{c['completed']}  held {c['held']}  starts {c['starts']}  SPC holds "
            f"{c['spc_holds']}  events/s {rate:5.0f}  outbox {c['outbox']}",
            "WIP by tool group: " + (wip or "-")[:600],
            getattr(self, "events_header", ""),
            _table(rows, ["tool", "proto", "link", "E10 state", "lot", "inhibit"]),
            "",
            *self.events,
        ]
        return "\n".join(body)

    # -- main -----------------------------------------------------------------------------
    async def run(self) -> int:
        """Run the demo; whatever stops it (the end, Ctrl-C, SIGTERM), stop what it started."""
        # Until fabd's App takes the stop signals over (in its run), SIGTERM would kill this
        # process outright and leave redis-server and mosquitto running: cancel instead.
        main = asyncio.current_task()
        terminated = []

        def on_sigterm() -> None:
            terminated.append(True)
            main.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            return await self._run()
        except asyncio.CancelledError:
            if not terminated:
                raise
            return 128 + signal.SIGTERM
        finally:
            daemon = self.daemon
            if daemon is not None and not daemon.done():
                self.app.request_stop("demo over")
                with contextlib.suppress(BaseException):
                    await daemon
            await self._teardown()

    async def _run(self) -> int:
        from daemon import assemble, demo_fab

        args = self.args
        n_tools = max(20, args.tools)
        say(f"starting a synthetic fab: {n_tools} tools, speed {args.speed:g}x, "
            f"{args.duration:.0f}s (Ctrl-C stops)")
        redis_url = await self._redis()
        if args.fab == "smt2020":
            plan, hsms = await self._start_farm()
            opcua, mqtt_port = [], None
        else:
            mqtt_port = await self._mosquitto()
            tools = demo_fab.tools(n_tools)
            plan = demo_fab.plan(tools, args.speed)
            hsms, opcua = await self._start_tools(tools)
        cfg = self._config(redis_url, hsms, opcua, mqtt_port)
        self.app, self.core = assemble.build(cfg, recipes=plan.recipes)
        n_lots = args.lots or (200 if args.fab == "smt2020"  # a whole fab: keep its tools busy
                               else max(12, int(args.duration * args.speed / 150)))
        say("warming up fabd (first run compiles the numba kernels; later runs load them)")
        daemon = self.daemon = asyncio.create_task(self.app.run(), name="fabd")
        while not self.app.ready:
            if daemon.done():
                return daemon.result()
            await asyncio.sleep(0.1)
        say(f"fabd ready; metrics at http://{cfg.http.listen}/metrics, status at "
            f"http://{cfg.http.listen}/status; streams fab:lots fab:equipment fab:quality "
            f"fab:wip on {redis_url}")
        self.started_at = time.monotonic()
        helpers = [asyncio.create_task(self._erp(redis_url, plan, n_lots), name="demo.erp"),
                   asyncio.create_task(self._engineer(redis_url), name="demo.engineer"),
                   *([asyncio.create_task(self._faults(), name="demo.faults")]
                     if args.fab == "synthetic" else []),
                   asyncio.create_task(self._view(), name="demo.view")]
        if mqtt_port is not None:
            helpers.append(asyncio.create_task(self._sensors(mqtt_port), name="demo.sensors"))
        rc = 0
        try:
            deadline = self.started_at + args.duration
            while time.monotonic() < deadline and not daemon.done():
                await asyncio.sleep(0.5)
                st = self.core.status()["counters"]
                if self.released >= n_lots and st["completed"] + _scrapped(self.core) >= n_lots:
                    self.note("every released lot completed")
                    break
        except asyncio.CancelledError:
            pass
        finally:
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.app.request_stop("demo over")
            with contextlib.suppress(Exception):
                rc = await daemon
            self._summary()
        return rc

    def _summary(self) -> None:
        from prometheus_client import REGISTRY

        st = self.core.status()
        c = st["counters"]
        print("\n".join([
            "",
            "fabd demo summary",
            f"  lots released {self.released}, completed {c['completed']}, still held "
            f"{c['held']}, lots started by fabd {c['starts']}",
            f"  SPC holds {c['spc_holds']}, SPC violations "
            f"{_metric_sum(REGISTRY, 'fabd_spc_violations_total'):.0f}, track-ins refused "
            f"{_metric_sum(REGISTRY, 'fabd_track_in_refused_total'):.0f}",
            f"  events published to Redis "
            f"{_metric_sum(REGISTRY, 'fabd_bus_events_published_total'):.0f}, outbox left "
            f"{c['outbox']}",
            ("  the demo's own Redis stops with it; to keep the streams, run with --redis-url "
             "and read them with: fabd consume --stream fab:lots --check-wip --redis-url URL"
             if self.redis_server else
             f"  read the streams:  fabd consume --stream fab:lots --check-wip "
             f"--redis-url {self.args.redis_url}"),
            *[f"  {e}" for e in self.events],
        ]), flush=True)

    async def _teardown(self) -> None:
        for sim in self.gem_sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        for sim in self.opcua_sims.values():  # close(): stop() is the tool's reboot knob
            with contextlib.suppress(Exception):
                await sim.close()
        farm = getattr(self, "farm", None)
        if farm is not None and farm.returncode is None:
            farm.stdin.write(b"quit\n")
            with contextlib.suppress(Exception):
                await farm.stdin.drain()
                await asyncio.wait_for(farm.wait(), 20)
        for server in (self.mqtt_server, self.redis_server):
            if server is not None:
                await asyncio.to_thread(server.stop)
        if not self.args.state_dir:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def _start_server(server) -> None:
    """Start a child server in a thread; a cancel waits for the start, so teardown can stop it."""
    start = asyncio.ensure_future(asyncio.to_thread(server.start))
    try:
        await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await start
        raise


async def _xadd(client, stream: str, fields: dict) -> None:
    """XADD, retried while Redis is away (the ERP side does not give up on a command)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    delay_s = 0.2
    while True:
        try:
            await client.xadd(stream, fields)
            return
        except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("ERP: Redis unavailable (%s); retrying in %.1fs", exc, delay_s)
        await asyncio.sleep(delay_s)
        delay_s = min(2.0, delay_s * 2)


async def _xadd_many(client, stream: str, entries: list[dict]) -> None:
    """XADD a batch in one pipeline (master data), retried as a whole while Redis is away."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    while True:
        try:
            pipe = client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(stream, fields)
            await pipe.execute()
            return
        except (OSError, RedisConnectionError) as exc:
            log.warning("ERP: Redis unavailable (%s); retrying", exc)
            await asyncio.sleep(1.0)


def _default_dataset():

    from dispatch.smt2020 import DEFAULT_DATASET

    return DEFAULT_DATASET


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _scrapped(core) -> int:
    return sum(1 for lot in core.bus.mes.lots.values() if lot.state == "scrapped")


def _metric_sum(registry, name: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                total += sample.value
    return total


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _toml(raw: dict) -> str:
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"
