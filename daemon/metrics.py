"""The daemon's own Prometheus metrics (lifecycle and tick). Subsystems define theirs beside their code."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)

TICK_DURATION = Histogram(
    "fabd_tick_duration_seconds", "Wall time of one tick (all steps)", buckets=TICK_BUCKETS_S)
TICK_LATENESS = Histogram(
    "fabd_tick_lateness_seconds", "How late a tick started against its schedule",
    buckets=TICK_BUCKETS_S)
TICK_STEP_DURATION = Histogram(
    "fabd_tick_step_duration_seconds", "Wall time of one tick step", ["step"],
    buckets=TICK_BUCKETS_S)
TICK_OVERRUNS = Counter(
    "fabd_tick_overruns_total", "Ticks skipped because the previous one ran past its slot")
TICK_STEP_ERRORS = Counter(
    "fabd_tick_step_errors_total", "Tick steps that raised (the tick carries on)", ["step"])
LAST_TICK = Gauge(
    "fabd_tick_last_completed_timestamp_seconds", "Unix time the last tick completed")
COMPONENT_RESTARTS = Counter(
    "fabd_component_restarts_total", "Components restarted after a crash", ["component"])
READY = Gauge("fabd_ready", "1 once the daemon is ready (store open, kernels warm, Redis reachable)")
UP_SINCE = Gauge("fabd_start_time_seconds", "Unix time the daemon started")
