"""`fabd demo --fab smt2020`: the SMT2020 HVLM fab (1,443 tools) as ERP master data.

Every tool family becomes a tool group and each of its tools a SECS/GEM tool
on the equipment farm; every route step gets its own recipe (approved, its
body downloaded by fabd with S7F3 on first use); tools are qualified for the
recipes of their family. Lots are released from the order file's product mix.
Process times on the farm are uniform (the farm runs one time for every
tool); the dispatcher still sees SMT2020's batching and setups.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from daemon import events as ev
from dispatch import smt2020

WAFERS_PER_LOT = 25


@dataclass
class SmtPlan:
    tools: list[tuple[str, str]] = field(default_factory=list)  # (tool id, family)
    commands: list = field(default_factory=list)
    recipes: dict[str, bytes] = field(default_factory=dict)
    products: list[str] = field(default_factory=list)


def tool_id(family: str, i: int) -> str:
    return f"{family}_{i:02d}"


def plan(dataset_path: str, process_time_s: float) -> SmtPlan:
    """ERP commands for the SMT2020 fab at `dataset_path`."""
    data = smt2020.load(dataset_path)
    p = SmtPlan()
    n = 0

    def cid() -> str:
        nonlocal n
        n += 1
        return f"smt-setup-{n:06d}"

    for fam in sorted(data.families.values(), key=lambda f: f.name):
        for i in range(1, fam.count + 1):
            p.tools.append((tool_id(fam.name, i), fam.name))
            p.commands.append(ev.DefineTool(command_id=cid(), tool_id=tool_id(fam.name, i),
                                            tool_group=fam.name))
    recipes_of: dict[str, list[str]] = {}
    routes: dict[str, list[ev.RouteStep]] = {}
    for route_id, steps in data.routes.items():
        out = []
        for s in steps:
            rid = f"{route_id}-{s.step:03d}"
            body = f"# SMT2020 {route_id} step {s.step} {s.desc} on {s.family}\n".encode() * 4
            p.recipes[rid] = body
            recipes_of.setdefault(s.family, []).append(rid)
            batch = max(1, s.batch_max // WAFERS_PER_LOT) if s.batch_max else 1
            out.append(ev.RouteStep(
                step_id=f"{route_id}-{s.step:03d}", tool_group=s.family, recipe_id=rid,
                recipe_version=1, process_time_s=process_time_s,
                batch_min_lots=1, batch_max_lots=batch, setup_group=s.setup))
        routes[route_id] = out
    for rid, body in p.recipes.items():
        p.commands.append(ev.ApproveRecipe(command_id=cid(), recipe_id=rid, version=1,
                                           checksum=hashlib.sha256(body).hexdigest()))
    for tid, family in p.tools:
        for rid in recipes_of.get(family, []):
            p.commands.append(ev.QualifyTool(command_id=cid(), tool_id=tid, recipe_id=rid))
    for route_id, steps in routes.items():
        p.commands.append(ev.DefineRoute(command_id=cid(), route_id=route_id, steps=steps))
    for part in data.parts.values():
        p.commands.append(ev.DefineProduct(command_id=cid(), product_id=part.name,
                                           route_id=part.route))
        p.products.append(part.name)
    return p


def lot_release(index: int, products: list[str], now: dt.datetime) -> ev.CreateLot:
    """The index-th lot: the products in turn, every 20th a hot lot (as the order file mixes)."""
    product = products[index % len(products)]
    hot = index % 20 == 7
    return ev.CreateLot(command_id=f"smt-lot-{index:06d}",
                        lot_id=f"{'HotLot' if hot else 'Lot'}_{product[-1]}_{index:05d}",
                        production_order=f"O_{product}", product_id=product,
                        wafers=WAFERS_PER_LOT, priority=90 if hot else 50,
                        due=now + dt.timedelta(hours=6))
