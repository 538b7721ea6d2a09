"""Lifecycle: warm up, run named components in a TaskGroup, supervise them, stop within budget.

A component is a long-running coroutine (`*_loop()` / `run()`). If one
crashes it is logged with its name and either restarted with exponential
backoff or, when marked critical, brings the daemon down with exit code 1 —
it never dies silently. A ConfigError brings it down with exit code 2, which
systemd does not restart. SIGTERM/SIGINT start a graceful stop in three phases
whose budgets sum to less than the unit's TimeoutStopSec:

1. intake   — stop taking new ERP commands and tool events;
2. flush    — commit state and drain the outbox to Redis;
3. sessions — separate equipment sessions politely;

then whatever is still running is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from daemon import metrics
from daemon.config import FabdConfig
from daemon.errors import ConfigError
from daemon.sdnotify import Notifier
from daemon.tick import Tick

log = logging.getLogger("fabd.app")

Phase = Literal["intake", "flush", "sessions"]
PHASES: tuple[Phase, ...] = ("intake", "flush", "sessions")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# A component that has run this long without crashing gets its backoff reset.
_HEALTHY_AFTER_S = 60.0


@dataclass(slots=True)
class Component:
    name: str
    run: Callable[[], Awaitable[None]]
    critical: bool = False
    restarts: int = 0


@dataclass(slots=True)
class _Hook:
    name: str
    fn: Callable[[], object]


@dataclass
class App:
    """The daemon: components, warm-ups, readiness checks and stop hooks, wired by `daemon.assemble`."""

    config: FabdConfig
    notifier: Notifier = field(default_factory=Notifier)
    tick: Tick | None = None

    def __post_init__(self) -> None:
        self.components: list[Component] = []
        self._warmups: list[_Hook] = []
        self._readiness: list[_Hook] = []
        self._liveness: list[_Hook] = []
        self._not_alive = ""  # the failed liveness check said once (until it passes again)
        self._stop_hooks: dict[Phase, list[_Hook]] = {p: [] for p in PHASES}
        self._closers: list[_Hook] = []
        self._stop = asyncio.Event()
        self._fatal: tuple[str, BaseException] | None = None
        self._start_signal: int | None = None
        self.ready = False
        self.started_at = time.time()
        if self.tick is None:
            self.tick = Tick(self.config.tick.interval_s)
        self.tick.after_tick(self._watchdog)

    # -- wiring -------------------------------------------------------------------------
    def add_component(self, name: str, run: Callable[[], Awaitable[None]], *,
                      critical: bool = False) -> None:
        """Run `run()` as the named task `name` for the daemon's lifetime."""
        self.components.append(Component(name, run, critical))

    def add_warmup(self, name: str, fn: Callable[[], object]) -> None:
        """Run `fn` (sync or async) before READY; a failure stops the start with exit 1."""
        self._warmups.append(_Hook(name, fn))

    def add_readiness_check(self, name: str, fn: Callable[[], object]) -> None:
        """`fn()` (sync or async) returns truthy when that part is ready; /readyz asks all."""
        self._readiness.append(_Hook(name, fn))

    def add_liveness_check(self, name: str, fn: Callable[[], str]) -> None:
        """`fn()` returns "" while that part makes progress, else what is stuck: /healthz
        fails and the systemd watchdog pings stop (systemd restarts fabd)."""
        self._liveness.append(_Hook(name, fn))

    def add_stop_hook(self, phase: Phase, name: str, fn: Callable[[], object]) -> None:
        """Run `fn` during the graceful stop, within the phase's budget."""
        self._stop_hooks[phase].append(_Hook(name, fn))

    def add_closer(self, name: str, fn: Callable[[], object]) -> None:
        """Run `fn` once every component has stopped (close the store last, after the writer)."""
        self._closers.append(_Hook(name, fn))

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", reason)
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- health -------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        """Process alive, tick fresh, and every liveness check passes."""
        assert self.tick is not None
        if not self.tick.is_fresh(self.config.tick.stale_after_intervals):
            return False, "tick is stale"
        stuck = self._stuck()
        return (False, stuck) if stuck else (True, "ok")

    def _stuck(self) -> str:
        """What a liveness check says is stuck ("" when none is)."""
        for hook in self._liveness:
            why = hook.fn()
            if why:
                return f"{hook.name}: {why}"
        return ""

    def _watchdog(self) -> None:
        """After each tick: ping the systemd watchdog, unless a part is stuck."""
        stuck = self._stuck()
        if stuck and stuck != self._not_alive:
            log.error("%s; not pinging the systemd watchdog (systemd restarts fabd after "
                      "WatchdogSec)", stuck)
        elif not stuck and self._not_alive:
            log.info("%s no more: pinging the systemd watchdog again", self._not_alive)
        self._not_alive = stuck
        if not stuck:
            self.notifier.watchdog()

    async def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Ready to serve: warm, and every readiness check passes."""
        results: dict[str, bool] = {"warm": self.ready}
        for hook in self._readiness:
            try:
                results[hook.name] = bool(await _maybe_await(hook.fn()))
            except Exception:
                results[hook.name] = False
        return all(results.values()), results

    # -- running ------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        loop = asyncio.get_running_loop()
        metrics.UP_SINCE.set(self.started_at)
        watchdog_s = self.notifier.watchdog_interval_s
        assert self.tick is not None
        if watchdog_s and 2 * self.tick.interval_s >= watchdog_s:
            # WATCHDOG=1 follows each tick, so one tick late by the rest of the interval (or
            # every tick, from the interval up) would get fabd killed by systemd.
            log.error("tick.interval_s: %g s must be below half the systemd watchdog interval "
                      "(WatchdogSec=%g s); shorten the tick or raise WatchdogSec",
                      self.tick.interval_s, watchdog_s)
            self.notifier.stopping("tick.interval_s too long for the watchdog")
            return 2
        # During the warm-up the loop is mostly blocked (numba compiles synchronously, for
        # minutes on a first start), so a stop signal is noted by a plain handler and looked
        # at between warm-ups; then the loop's handlers take over.
        previous = {sig: signal.signal(sig, self._signal_during_start) for sig in _STOP_SIGNALS}
        hook = None
        try:
            for hook in self._warmups:
                if self._start_signal is not None or self._stop.is_set():
                    break
                self.notifier.status(f"warming up: {hook.name}")
                t0 = time.perf_counter()
                await _maybe_await(hook.fn())
                log.info("warm-up %s done in %.2fs", hook.name, time.perf_counter() - t0)
        except Exception as exc:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            name = hook.name if hook is not None else "?"
            log.exception("warm-up %s failed: %s; not starting", name, exc)
            self.notifier.stopping(f"warm-up {name} failed: {exc}")
            return 1
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        if self._start_signal is not None:
            self.request_stop(f"signal {signal.Signals(self._start_signal).name} during start-up")
        if self._stop.is_set():
            # never READY: skip the rest of the warm-up and close what it opened (the store)
            self.notifier.stopping("stopping during start-up")
            await self._close()
            log.info("fabd stopped during start-up")
            return 0

        self.add_component("tick", self.tick.run_loop, critical=True)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self._supervise(c), name=c.name) for c in self.components]
            self.ready = True
            metrics.READY.set(1)
            self.notifier.ready(f"running: {len(self.components)} components")
            log.info("fabd ready: %d components (%s)", len(self.components),
                     ", ".join(c.name for c in self.components[:8])
                     + (", ..." if len(self.components) > 8 else ""))
            await self._stop.wait()
            self.ready = False
            metrics.READY.set(0)
            self.notifier.stopping("stopping")
            await self._graceful_stop()
            for task in tasks:
                task.cancel()
        await self._close()
        if self._fatal is not None:
            name, exc = self._fatal
            log.error("fabd stopped because component %s failed: %r", name, exc)
            return 2 if isinstance(exc, ConfigError) else 1
        log.info("fabd stopped cleanly")
        return 0

    def _signal_during_start(self, signum: int, _frame: object) -> None:
        self._start_signal = signum  # only a note: this runs between any two bytecodes

    async def _close(self) -> None:
        """Run the closers (the store last), then let go of the notify socket."""
        for hook in self._closers:
            try:
                await _maybe_await(hook.fn())
            except Exception:
                log.exception("closing %s failed", hook.name)
        self.notifier.close()

    async def _graceful_stop(self) -> None:
        svc = self.config.service
        budgets = {"intake": svc.stop_intake_budget_s, "flush": svc.stop_flush_budget_s,
                   "sessions": svc.stop_sessions_budget_s}
        for phase in PHASES:
            hooks = self._stop_hooks[phase]
            if not hooks:
                continue
            t0 = time.perf_counter()
            coros = [_maybe_await(h.fn()) for h in hooks]
            try:
                async with asyncio.timeout(budgets[phase]):
                    results = await asyncio.gather(*coros, return_exceptions=True)
                for hook, res in zip(hooks, results, strict=True):
                    if isinstance(res, BaseException):
                        log.error("stop %s: %s failed: %r", phase, hook.name, res)
            except TimeoutError:
                log.error("stop %s: %s over its %.1fs budget (service.stop_%s_budget_s); moving "
                          "on, the rest of it cancelled", phase,
                          ", ".join(h.name for h in hooks), budgets[phase], phase)
            log.info("stop %s done in %.2fs", phase, time.perf_counter() - t0)

    async def _supervise(self, comp: Component) -> None:
        """Run a component; restart it with backoff after a crash, or stop the daemon if critical."""
        backoff_s = 1.0
        max_backoff_s = self.config.service.component_restart_max_backoff_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await comp.run()
                if self._stop.is_set():
                    return
                raise RuntimeError("returned while the daemon was running")
            except asyncio.CancelledError:
                raise
            except ConfigError as exc:
                # e.g. a password file the Redis client cannot read: no restart fixes that
                log.critical("component %s: %s; fix the config and start again", comp.name, exc)
                self._fatal = (comp.name, exc)
                self.request_stop(f"config error in component {comp.name}")
                return
            except Exception as exc:
                if self._stop.is_set():
                    return
                if comp.critical:
                    log.critical("component %s crashed: %r; stopping the daemon", comp.name, exc,
                                 exc_info=exc)
                    self._fatal = (comp.name, exc)
                    self.request_stop(f"critical component {comp.name} failed")
                    return
                if time.monotonic() - started > _HEALTHY_AFTER_S:
                    backoff_s = 1.0
                comp.restarts += 1
                metrics.COMPONENT_RESTARTS.labels(comp.name).inc()
                log.error("component %s crashed: %r; restart %d in %.1fs", comp.name, exc,
                          comp.restarts, backoff_s, exc_info=exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff_s):
                        await self._stop.wait()
                backoff_s = min(backoff_s * 2, max_backoff_s)


async def _maybe_await(value: object) -> object:
    if inspect.isawaitable(value):
        return await value
    return value
