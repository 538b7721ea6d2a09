"""The tick: a fixed-rate loop that runs registered steps in order, measures itself, never stacks.

Order inside one tick (ARCHITECTURE.md): apply arrived events → SPC → holds and
inhibits → dispatch scoring → commands to tools → commit. Later components
register their steps with `add_step`. A tick that overruns its slot is
reported and the missed slots are skipped, not run back to back. Trouble that
lasts (a tick overrunning slot after slot, a step failing at every tick) is
counted every time and logged when it starts and when it ends (STYLE: log
changes of state, not polls).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon import metrics

log = logging.getLogger("fabd.tick")

StepFn = Callable[[], None] | Callable[[], Awaitable[None]]


@dataclass(slots=True)
class _Step:
    name: str
    fn: StepFn
    is_async: bool
    failing: int = 0  # ticks in a row this step raised


class Tick:
    """Runs steps every `interval_s`; `on_tick` callbacks (e.g. the watchdog) follow each tick."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._steps: list[_Step] = []
        self._after: list[Callable[[], None]] = []
        self.count = 0
        self.overruns = 0
        self._overrun_since: tuple[float, int] | None = None  # (clock, overruns) at its start
        self.last_completed_monotonic: float | None = None
        self.loop_started_monotonic: float | None = None  # run_loop began (after warm-up)
        self.last_duration_s = 0.0

    def add_step(self, name: str, fn: StepFn) -> None:
        """Register a step; steps run in registration order."""
        self._steps.append(_Step(name, fn, inspect.iscoroutinefunction(fn)))

    def after_tick(self, fn: Callable[[], None]) -> None:
        """Register a callback that runs after every completed tick (watchdog ping)."""
        self._after.append(fn)

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self._steps]

    async def run_once(self) -> float:
        """Run every step once; return the tick's duration in seconds."""
        t0 = self._clock()
        for step in self._steps:
            s0 = self._clock()
            try:
                if step.is_async:
                    await step.fn()
                else:
                    step.fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broken step must not stop the others (or the watchdog); it is loud instead:
                # counted every tick, its traceback logged when it starts failing.
                metrics.TICK_STEP_ERRORS.labels(step.name).inc()
                if not step.failing:
                    log.exception("tick step %s failed (logged again when it works)", step.name)
                step.failing += 1
            else:
                if step.failing:
                    log.info("tick step %s works again after failing %d tick(s)", step.name,
                             step.failing)
                    step.failing = 0
            metrics.TICK_STEP_DURATION.labels(step.name).observe(self._clock() - s0)
        duration = self._clock() - t0
        self.count += 1
        self.last_duration_s = duration
        self.last_completed_monotonic = self._clock()
        metrics.TICK_DURATION.observe(duration)
        metrics.LAST_TICK.set(time.time())
        for fn in self._after:
            fn()
        return duration

    async def run_loop(self) -> None:
        """Tick forever at a fixed rate until cancelled."""
        next_at = self.loop_started_monotonic = self._clock()
        while True:
            now = self._clock()
            lateness = max(0.0, now - next_at)
            metrics.TICK_LATENESS.observe(lateness)
            duration = await self.run_once()
            next_at += self.interval_s
            now = self._clock()
            if now > next_at:
                missed = int((now - next_at) // self.interval_s) + 1
                if self._overrun_since is None:
                    self._overrun_since = (now, self.overruns)
                    log.warning("tick overran: took %.3fs for a %.3fs slot; skipping %d slot(s) "
                                "(fabd_tick_overruns_total counts the rest)",
                                duration, self.interval_s, missed)
                self.overruns += missed
                metrics.TICK_OVERRUNS.inc(missed)
                next_at += missed * self.interval_s
            elif self._overrun_since is not None:
                since, before = self._overrun_since
                self._overrun_since = None
                log.info("tick on time again after %.1fs; %d slot(s) skipped meanwhile",
                         now - since, self.overruns - before)
            await asyncio.sleep(max(0.0, next_at - self._clock()))

    def is_fresh(self, stale_after_intervals: int) -> bool:
        """True when a tick completed recently enough for /healthz (before the loop runs,
        during the warm-up: True; a first tick that never ends is stale like any other)."""
        last = self.last_completed_monotonic or self.loop_started_monotonic
        if last is None:
            return True
        return self._clock() - last < stale_after_intervals * self.interval_s
