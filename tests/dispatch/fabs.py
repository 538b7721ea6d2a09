"""Small hand-built fabs for the dispatch tests."""

from __future__ import annotations

from dispatch.config import RULES, Policy, load_policy
from dispatch.model import FabModel, StepSpec
from dispatch.scorer import Dispatcher


def line(*, setups: bool = False, qt_min: float = 0.0) -> FabModel:
    """Two routes through tool group G into downstream groups N1 (route A) and N2 (route B).

    Group G has tools G1 and G2; N1 and N2 have one tool each. With `setups`
    route A needs setup SA and route B setup SB (SA has a minimum run of 3,
    SA->SB takes 30 min). `qt_min` puts a queue-time limit from G to the next step.
    """
    m = FabModel()
    if setups:
        m.add_setup("SA", min_runs=3)
        m.add_setup("SB")
        m.set_setup_time("SA", "SB", 30.0)
        m.set_setup_time("SB", "SA", 30.0)
    for r, down in (("A", "N1"), ("B", "N2")):
        m.add_route(r, [
            StepSpec(group="G", recipe=f"{r}-1", ptime_min=60.0,
                     setup=f"S{r}" if setups else "",
                     qt_to_step=2 if qt_min else 0, qt_limit_min=qt_min),
            StepSpec(group=down, recipe=f"{r}-2", ptime_min=60.0),
            StepSpec(group="G", recipe=f"{r}-3", ptime_min=10.0),
        ])
        m.add_product(f"P{r}", r)
    for t, g in (("G1", "G"), ("G2", "G"), ("N1a", "N1"), ("N2a", "N2")):
        m.add_tool(t, g)
    return m


def batch_line() -> FabModel:
    """Routes A and B: feeder group F, then a 50..100-wafer batch step on G (tools G1, G2), then N."""
    m = FabModel()
    for r in ("A", "B"):
        m.add_route(r, [
            StepSpec(group="F", recipe=f"{r}-0", ptime_min=30.0),
            StepSpec(group="G", recipe=f"{r}-1", ptime_min=240.0, per="batch",
                     batch_min_wafers=50, batch_max_wafers=100),
            StepSpec(group="N", recipe=f"{r}-2", ptime_min=60.0),
        ])
        m.add_product(f"P{r}", r)
    for t, g in (("F1", "F"), ("G1", "G"), ("G2", "G"), ("Na", "N")):
        m.add_tool(t, g)
    return m


def rank(m: FabModel, policy: dict | Policy | None = None, tool: str = "G1", now: float = 0.0
         ) -> list[str]:
    """Return the lot ids of a tool's dispatch list, best first."""
    d = Dispatcher(m, load_policy(policy or {}))
    d.score(now)
    return [c.lot_id for c in d.explain(tool)]


def only(**rules: int) -> dict:
    """A policy with only the named rules on, each at its given level (weight 1)."""
    return {"preset": "fifo", "rules": {r: {"level": lv} if lv >= 0 else {"level": -1}
                                        for r, lv in {**dict.fromkeys(
                                            RULES, -1),
                                            **rules}.items()}}
