"""The demo's synthetic fab: tool groups, tools, products and routes, as the ERP would send them.

Three products over 20+ tools in eight tool groups, built so that a few minutes
of accelerated time show what a fab engineer looks for: a batch furnace, a
setup-dependent implanter, a queue-time limit (clean → furnace), metrology
with SPC charts, rework, and tools on SECS/GEM, OPC UA and MQTT.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from daemon import events as ev


@dataclass(frozen=True, slots=True)
class ToolGroup:
    name: str
    count: int
    process_time_s: float  # at speed 1 (the demo divides by --speed)
    protocol: str = "hsms"  # "hsms" | "opcua" for the whole group, see opcua_tools
    batch_max_lots: int = 1
    batch_min_lots: int = 1
    setup_groups: tuple[str, ...] = ()


GROUPS: tuple[ToolGroup, ...] = (
    ToolGroup("CLEAN", 3, 40.0),
    ToolGroup("FURN", 2, 150.0, batch_min_lots=1, batch_max_lots=4),
    ToolGroup("LITHO", 3, 60.0),
    ToolGroup("IMPL", 2, 50.0, setup_groups=("BORON", "PHOS", "ARSENIC")),
    ToolGroup("ETCH", 4, 55.0),
    ToolGroup("CVD", 2, 70.0),
    ToolGroup("CMP", 2, 45.0),
    ToolGroup("METRO", 2, 20.0),
)
# One CVD and one CMP tool speak OPC UA; every other tool speaks SECS/GEM over HSMS.
OPCUA_TOOLS = ("CVD02", "CMP01")


@dataclass(frozen=True, slots=True)
class DemoTool:
    tool_id: str
    group: ToolGroup
    protocol: str


def tools(n_tools: int = 20) -> list[DemoTool]:
    """The demo's tools: the base 20, then extra tools spread over the groups up to n_tools."""
    counts = {g.name: g.count for g in GROUPS}
    extra = max(0, n_tools - sum(counts.values()))
    names = [g.name for g in GROUPS]
    for i in range(extra):
        counts[names[i % len(names)]] += 1
    out = []
    for g in GROUPS:
        for i in range(1, counts[g.name] + 1):
            tid = f"{g.name}{i:02d}"
            out.append(DemoTool(tid, g, "opcua" if tid in OPCUA_TOOLS else "hsms"))
    return out


def recipe_body(recipe_id: str, version: int) -> bytes:
    """The approved recipe body (the simulators hold these; fabd verifies the checksum)."""
    return (f"# recipe {recipe_id} v{version}\nstep1: ramp 25C->{400 + len(recipe_id)}C 30s\n"
            f"step2: hold {recipe_id} 120s\nstep3: purge N2 15s\n").encode() * 8


def checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# step: (tool group, recipe suffix, setup group, queue time limit s to the next step)
_FLOWS: dict[str, list[tuple[str, str, str, float]]] = {
    "LOGIC": [("CLEAN", "PRE", "", 600.0), ("FURN", "OX", "", 0), ("LITHO", "L1", "", 0),
              ("ETCH", "STI", "", 0), ("CLEAN", "POST", "", 0), ("IMPL", "NW", "BORON", 0),
              ("IMPL", "PW", "PHOS", 0), ("CLEAN", "PRE", "", 600.0), ("FURN", "ANN", "", 0),
              ("CVD", "PMD", "", 0), ("CMP", "PMD", "", 0), ("METRO", "THK", "", 0),
              ("LITHO", "L2", "", 0), ("ETCH", "CT", "", 0), ("CVD", "W", "", 0),
              ("CMP", "W", "", 0), ("METRO", "THK", "", 0)],
    "MEMORY": [("CLEAN", "PRE", "", 600.0), ("FURN", "OX", "", 0), ("LITHO", "M1", "", 0),
               ("ETCH", "GATE", "", 0), ("IMPL", "SD", "ARSENIC", 0), ("CLEAN", "POST", "", 0),
               ("CVD", "ILD", "", 0), ("CMP", "ILD", "", 0), ("METRO", "THK", "", 0),
               ("LITHO", "M2", "", 0), ("ETCH", "VIA", "", 0), ("METRO", "CD", "", 0)],
    "POWER": [("CLEAN", "PRE", "", 600.0), ("FURN", "DRV", "", 0), ("IMPL", "BODY", "BORON", 0),
              ("LITHO", "P1", "", 0), ("ETCH", "TR", "", 0), ("CVD", "POLY", "", 0),
              ("CMP", "POLY", "", 0), ("METRO", "THK", "", 0), ("IMPL", "SRC", "PHOS", 0),
              ("CLEAN", "POST", "", 0)],
}
REWORK_ROUTE = "RW-LITHO"  # strip and re-expose: a failed lithography step comes back here


def recipe_id(group: str, suffix: str) -> str:
    return f"{group}-{suffix}"


@dataclass
class DemoFabPlan:
    """The ERP commands that set the fab up, in the order the ERP would send them."""

    commands: list[ev._Command] = field(default_factory=list)
    recipes: dict[str, bytes] = field(default_factory=dict)  # recipe id -> approved body
    routes: dict[str, list[ev.RouteStep]] = field(default_factory=dict)

    def add(self, cmd: ev._Command) -> None:
        self.commands.append(cmd)


def plan(demo_tools: list[DemoTool], speed: float = 1.0) -> DemoFabPlan:
    """Master data as ERP commands: tools, recipes, qualifications, routes and products."""
    p = DemoFabPlan()
    n = 0

    def cid() -> str:
        nonlocal n
        n += 1
        return f"demo-setup-{n:04d}"

    groups = {g.name: g for g in GROUPS}
    for t in demo_tools:
        p.add(ev.DefineTool(command_id=cid(), tool_id=t.tool_id, tool_group=t.group.name))
    rework_steps = [
        ev.RouteStep(step_id="RW-STRIP", tool_group="CLEAN", recipe_id="CLEAN-STRIP",
                     recipe_version=1, process_time_s=groups["CLEAN"].process_time_s / speed),
        ev.RouteStep(step_id="RW-INSPECT", tool_group="METRO", recipe_id="METRO-CD",
                     recipe_version=1, process_time_s=groups["METRO"].process_time_s / speed),
    ]
    p.routes[REWORK_ROUTE] = rework_steps
    for product, flow in _FLOWS.items():
        steps = []
        for i, (group, suffix, setup, qt) in enumerate(flow, start=1):
            g = groups[group]
            steps.append(ev.RouteStep(
                step_id=f"{product[:3]}-{i:02d}-{group}", tool_group=group,
                recipe_id=recipe_id(group, suffix), recipe_version=1,
                process_time_s=g.process_time_s / speed,
                batch_min_lots=g.batch_min_lots, batch_max_lots=g.batch_max_lots,
                setup_group=setup, queue_time_limit_s=qt / speed,
                rework_route_id=REWORK_ROUTE if group == "LITHO" else ""))
        p.routes[f"R-{product}"] = steps
    for steps in p.routes.values():
        for s in steps:
            p.recipes.setdefault(s.recipe_id, recipe_body(s.recipe_id, 1))
    for rid, body in sorted(p.recipes.items()):
        p.add(ev.ApproveRecipe(command_id=cid(), recipe_id=rid, version=1,
                               checksum=checksum(body)))
    for t in demo_tools:
        for rid in sorted(p.recipes):
            if rid.startswith(t.group.name + "-"):
                p.add(ev.QualifyTool(command_id=cid(), tool_id=t.tool_id, recipe_id=rid))
    for route_id, steps in p.routes.items():
        p.add(ev.DefineRoute(command_id=cid(), route_id=route_id, steps=steps))
    for product in _FLOWS:
        p.add(ev.DefineProduct(command_id=cid(), product_id=product, route_id=f"R-{product}",
                               description=f"demo {product.lower()} product"))
    return p


def lot_release(index: int, now: dt.datetime, speed: float = 1.0) -> ev.CreateLot:
    """The index-th lot the ERP releases: products in turn, every 7th a hot lot."""
    products = list(_FLOWS)
    product = products[index % len(products)]
    hot = index % 7 == 3
    return ev.CreateLot(
        command_id=f"demo-lot-{index:05d}", lot_id=f"{'HL' if hot else 'L'}{index:05d}",
        production_order=f"PO-{product}-{index // 10:03d}", product_id=product,
        wafers=25 if not hot else 5, priority=90 if hot else 50,
        due=now + dt.timedelta(seconds=(2400 if hot else 4800) / speed))
