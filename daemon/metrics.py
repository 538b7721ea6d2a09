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
READY = Gauge("fabd_ready", "1 from READY=1 (store open, state rebuilt, kernels warm) until the stop; "
              "Redis is fabd_redis_up and /readyz")
UP_SINCE = Gauge("fabd_start_time_seconds", "Unix time the daemon started")

# -- the running fab (what a shift lead watches) ---------------------------------------------
CYCLE_BUCKETS_S = (10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400,
                   3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 60 * 86400)

TOOLS_BY_E10 = Gauge("fabd_tools", "Tools by SEMI E10 state", ["state"])
TOOL_E10_SECONDS = Counter(
    "fabd_tool_state_seconds_total", "Time tools spent in each E10 state (utilisation)",
    ["tool_group", "state"])
WIP_LOTS = Gauge("fabd_wip_lots", "Lots in WIP by tool group and step", ["tool_group", "step"])
WIP_WAFERS = Gauge("fabd_wip_wafers", "Wafers in WIP by product", ["product"])
MOVES = Counter("fabd_moves_total", "Lot moves (track-outs to a next step)", ["tool_group"])
COMPLETIONS = Counter("fabd_lots_completed_total", "Lots that finished their route", ["product"])
WAFERS_SCRAPPED = Counter(
    "fabd_wafers_scrapped_total", "Wafers scrapped, with their lot or on their own (line yield "
    "loss)", ["product"])
CYCLE_TIME_LOT = Histogram(
    "fabd_lot_cycle_time_seconds", "Lot cycle time from creation to completion", ["product"],
    buckets=CYCLE_BUCKETS_S)
CYCLE_TIME_STEP = Histogram(
    "fabd_step_cycle_time_seconds", "Time from arrival at a step to track-out", ["step"],
    buckets=CYCLE_BUCKETS_S)
DISPATCH_DECISIONS = Counter(
    "fabd_dispatch_decisions_total", "Dispatch decisions by tool group and outcome",
    ["tool_group", "outcome"])
TRACK_IN_REFUSED = Counter(
    "fabd_track_in_refused_total", "Track-ins refused by process enforcement", ["reason"])
HOLDS = Gauge("fabd_lots_held", "Holds on active lots by class of reason: spc, queue_time, "
              "enforcement, nonconforming, erp", ["reason"])
SPC_VIOLATIONS = Counter("fabd_spc_violations_total", "SPC rule violations", ["rule"])
SPC_POINTS = Counter("fabd_spc_points_total", "Process-data points evaluated by SPC")
SPC_POINTS_DROPPED = Counter(
    "fabd_spc_points_dropped_total", "SPC points dropped because the intake queue was full")
