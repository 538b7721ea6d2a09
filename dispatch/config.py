"""Dispatch policy: which rules rank the lots for a tool, at which lexicographic level, with which weight.

A policy starts from a preset and overrides rules and parameters, for the
whole fab and per tool group::

    [dispatch]
    preset = "fabd"                 # "fabd" | "fifo" | "cr"
    max_list = 10                   # candidates kept in each tool's dispatch list
    qt_horizon_min = 120.0
    [dispatch.rules]
    setup = { level = 3, weight = 2.0 }
    [dispatch.groups.Implant_128]   # a tool group's overrides
    preset = "fifo"
    [dispatch.groups.Implant_128.rules]
    setup = { level = 1, weight = 1.0 }

Each rule gives every candidate a feature value, oriented so that larger is
preferred (see `RULE_DOC`). A candidate's key at level l is the sum of
weight x feature over the rules at level l; candidates are ordered by their
keys level by level (level 0 first), then by arrival at the step, due date and
lot index (FIFO as the final tie-break). A rule at level -1 (or weight 0) is off.

The presets "fifo" and "cr" are PySCFabSim's hierarchical dispatchers
(minimum-run violation, then lots waiting under a queue-time limit, then setup
time needed, then priority, then FIFO arrival or critical ratio); "fabd" is
this project's default: hot lots, minimum runs, queue-time windows and least
setup first, then fluctuation smoothing ("slack": the lot furthest behind the
pace that meets its due date). The preset "deliver" is fabd with due-date
triage (rule "deliver": lots that can still make their due date before lots
that cannot) above the slack rule, for a fab where delivery matters more than
cycle time. Their SMT2020 results, and that trade-off, are in
bench/fabsim/README.md ("Quality").

`load_policy(path | dict)` parses and validates (errors carry key paths);
`compile_policy(policy, model)` checks tool-group names and returns the
arrays the kernel reads. A daemon reloads on SIGHUP with
`Dispatcher.reload()`, which keeps the old policy when the new one is invalid.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import numpy as np

from dispatch.errors import PolicyError

if TYPE_CHECKING:
    from dispatch.model import FabModel

__all__ = [
    "PRESETS",
    "RULES",
    "RULE_DOC",
    "GroupPolicy",
    "Policy",
    "PolicyArrays",
    "RuleWeight",
    "Rules",
    "compile_policy",
    "load_policy",
    "smt2020_policy",
]

# Rule order is the kernel's feature column order; MINRUN and SETUP depend on the tool.
RULES: tuple[str, ...] = ("minrun", "qtime", "hot", "priority", "setup", "cr", "slack",
                          "batch", "balance", "fifo", "deliver")
RULE_DOC: dict[str, str] = {
    "minrun": "-1 if running the lot would leave the tool's setup before its minimum run, else 0",
    "qtime": "queue-time urgency: 0 outside a window; inside, horizon/(horizon+slack) (1 if horizon 0)",
    "hot": "hot-lot class: 0 normal, 1 hot, 2 super hot",
    "priority": "the lot's priority number",
    "setup": "-(setup time the tool needs for the lot) in hours",
    "cr": "-(critical ratio): -(due - now) / remaining process time",
    "slack": "-(slack to the lot's pace) in days: -((due - now) - slack_flow_factor x remaining "
             "process time) / 1440; with slack_flow_factor = the X-factor due dates are quoted at "
             "this is fluctuation smoothing for mean cycle time (Lu, Ramaswamy & Kumar 1994): the "
             "lot furthest behind the pace that meets its due date goes first; a lot with no "
             "due date counts as on its pace (0)",
    "batch": "batch fullness: wafers of the same recipe waiting / batch max (0 for non-batch steps)",
    "balance": "line balance: (target - wait at next step's group) / target, clipped to [-1, 1]",
    "fifo": "hours the lot has waited at its step",
    "deliver": "due-date triage: 0 for a lot that can still make its due date (time to due >= "
               "deliver_flow_factor x remaining process time), -1 for one that cannot; the rule at "
               "the next level ranks the lots within each class (slack in the 'deliver' preset)",
}
MAX_LEVEL = len(RULES) - 1


class RuleWeight(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule's place in the ranking: its lexicographic level (-1 = off) and weight."""

    level: int = 0          # 0 = most significant; -1 = rule off
    weight: float = 1.0     # multiplies the rule's feature within its level


class Rules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rule overrides; a rule left out keeps its preset (or fab-wide) setting."""

    minrun: RuleWeight | None = None
    qtime: RuleWeight | None = None
    hot: RuleWeight | None = None
    priority: RuleWeight | None = None
    setup: RuleWeight | None = None
    cr: RuleWeight | None = None
    slack: RuleWeight | None = None
    batch: RuleWeight | None = None
    balance: RuleWeight | None = None
    fifo: RuleWeight | None = None
    deliver: RuleWeight | None = None


class GroupPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Overrides for one tool group; a field left out (None) keeps the fab-wide value."""

    preset: str | None = None                     # a group may start from another preset
    rules: Rules = Rules()
    lookahead_min: float | None = None            # a tool busy for at most this long is "about to be idle"
    qt_horizon_min: float | None = None           # queue-time slack at which urgency is 1/2; 0: 0/1 urgency
    qt_gate: bool | None = None                   # never start a lot whose downstream queue-time limit
    qt_gate_factor: float | None = None           #   cannot be met: downstream wait > factor x limit
    batch_fill: float | None = None              # a batch goes when wafers >= fill x batch max, or
    batch_max_wait_min: float | None = None       # its oldest lot waited this long, or nothing more
    #                                               of its recipe is one step upstream
    balance_target_wait_min: float | None = None  # downstream queue (minutes of work per tool) aimed at
    deliver_flow_factor: float | None = None      # time to due / remaining process time a lot needs
    #                                               to count as still deliverable (rule "deliver")
    slack_flow_factor: float | None = None        # X-factor (cycle time / raw process time) the due
    #                                               dates are quoted at (rule "slack")
    setup_switch_lots: float | None = None        # a tool changes to a setup other tools up already
    #                                               hold only when more lots than this per such tool
    #                                               wait for it (0: always may; hot lots always may)


class Policy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole dispatch policy: a preset, fab-wide overrides and per-tool-group overrides."""

    preset: str = "fabd"
    max_list: int = 10                            # candidates kept per tool
    rules: Rules = Rules()
    lookahead_min: float | None = None
    qt_horizon_min: float | None = None
    qt_gate: bool | None = None
    qt_gate_factor: float | None = None
    batch_fill: float | None = None
    batch_max_wait_min: float | None = None
    balance_target_wait_min: float | None = None
    deliver_flow_factor: float | None = None
    slack_flow_factor: float | None = None
    setup_switch_lots: float | None = None
    groups: dict[str, GroupPolicy] = {}


class _Preset(NamedTuple):
    rules: dict[str, RuleWeight]
    lookahead_min: float
    qt_horizon_min: float
    qt_gate: bool
    qt_gate_factor: float
    batch_fill: float
    batch_max_wait_min: float
    balance_target_wait_min: float
    deliver_flow_factor: float
    slack_flow_factor: float
    setup_switch_lots: float


# A lot counts as deliverable while it keeps to the pace of its due date: SMT2020 quotes due
# dates at 2.09 (Lot_4) to 2.18 (Lot_3) x raw process time, and a threshold just under the
# lower quote put the most lots on time (bench/fabsim/README.md, "Quality"; 1.4, the pace of
# hot lots, left half of them late). Set it just under the X-factor your due dates assume.
DELIVER_FLOW_FACTOR = 2.05


# SMT2020 quotes due dates at about 2.1 x raw process time (Lot_3 53.8 d for 24.7 d of
# processing, Lot_4 30.3 d for 14.5 d); set it to the X-factor your own due dates assume.
SLACK_FLOW_FACTOR = 2.1


# A tool that runs out of lots for its setup would change to the setup of the most urgent lot
# waiting even when other tools already hold that setup and will run those lots without a
# change. On SMT2020's implanters (60-80 minute setups) that greedy change took a quarter of
# their time; allowing it only when more than 5 lots per such tool wait for the setup cut it
# to under a tenth (bench/fabsim/README.md, "Quality").
SETUP_SWITCH_LOTS = 5.0


def _rw(level: int, weight: float = 1.0) -> RuleWeight:
    return RuleWeight(level=level, weight=weight)


_OFF = RuleWeight(level=-1, weight=0.0)


def _hierarchical(last: str) -> _Preset:
    # PySCFabSim: (min-run violation, waiting under a queue-time limit, setup time, priority, last)
    rules = dict.fromkeys(RULES, _OFF)
    rules.update(minrun=_rw(0), qtime=_rw(1), setup=_rw(2), priority=_rw(3), **{last: _rw(4)})
    return _Preset(rules, lookahead_min=0.0, qt_horizon_min=0.0, qt_gate=False,
                   qt_gate_factor=1.0, batch_fill=0.0, batch_max_wait_min=0.0,
                   balance_target_wait_min=240.0, deliver_flow_factor=DELIVER_FLOW_FACTOR,
                   slack_flow_factor=1.0, setup_switch_lots=0.0)


PRESETS: dict[str, _Preset] = {
    "fifo": _hierarchical("fifo"),
    "cr": _hierarchical("cr"),
    "fabd": _Preset(
        # Hot lots first, then minimum runs, queue-time windows and setup avoidance as in
        # PySCFabSim's dispatchers, then fluctuation smoothing: the lot furthest behind the
        # pace that meets its due date. On SMT2020 HVLM this beats CR on cycle time, lots
        # finished and on-time share (bench/fabsim/README.md, "Quality"); "deliver" instead
        # of "slack" trades cycle time for more lots on time.
        rules={"hot": _rw(0), "minrun": _rw(1), "qtime": _rw(2), "setup": _rw(3),
               "slack": _rw(4), "priority": _OFF, "cr": _OFF, "batch": _OFF, "balance": _OFF,
               "fifo": _OFF, "deliver": _OFF},
        # qt_gate off: in the SMT2020 HVLM simulation (200 days) it raised queue-time
        # violations by a quarter; switch it on per group in front of known bottlenecks
        lookahead_min=5.0, qt_horizon_min=0.0, qt_gate=False, qt_gate_factor=1.0,
        batch_fill=0.0, batch_max_wait_min=0.0, balance_target_wait_min=240.0,
        deliver_flow_factor=DELIVER_FLOW_FACTOR, slack_flow_factor=SLACK_FLOW_FACTOR,
        setup_switch_lots=SETUP_SWITCH_LOTS),
}
# "deliver": fabd with due-date triage above fluctuation smoothing. Lots that keep to the pace
# of their due date go first, each class ranked by slack; where the fab cannot make every
# due date (SMT2020 in PySCFabSim's mode) this puts four in five lots on time instead of one
# in four, for a few more days of mean cycle time (bench/fabsim/README.md, "Quality").
PRESETS["deliver"] = PRESETS["fabd"]._replace(
    rules={**PRESETS["fabd"].rules, "deliver": _rw(4), "slack": _rw(5)})

_PARAMS = ("lookahead_min", "qt_horizon_min", "qt_gate", "qt_gate_factor", "batch_fill",
           "batch_max_wait_min", "balance_target_wait_min", "deliver_flow_factor",
           "slack_flow_factor", "setup_switch_lots")


class PolicyArrays(NamedTuple):
    """The compiled policy the kernel reads: one row per tool group."""

    level: np.ndarray                     # int8[G, R], -1 = rule off
    weight: np.ndarray                    # float64[G, R]
    lookahead_min: np.ndarray             # float64[G]
    qt_horizon_min: np.ndarray            # float64[G]
    qt_gate: np.ndarray                   # bool[G]
    qt_gate_factor: np.ndarray            # float64[G]
    batch_fill: np.ndarray                # float64[G]
    batch_max_wait_min: np.ndarray        # float64[G]
    balance_target_wait_min: np.ndarray   # float64[G]
    deliver_flow_factor: np.ndarray       # float64[G]
    slack_flow_factor: np.ndarray         # float64[G]
    setup_switch_lots: np.ndarray         # float64[G]


_LOC = re.compile(r"- at `\$(.*)`")


def load_policy(source: str | Path | dict[str, Any] | Policy) -> Policy:
    """Parse and validate a policy from a TOML file ([dispatch] table or top level) or a dict.

    Raises PolicyError listing every problem with its key path.
    """
    where = ""
    if isinstance(source, Policy):
        policy = source
    else:
        if isinstance(source, str | Path):
            where = str(source)
            try:
                data = tomllib.loads(Path(source).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise PolicyError([("", str(exc))], where) from None
            data = data.get("dispatch", data)
        else:
            data = source
        policy = _convert(data, where)
    problems = _validate(policy)
    if problems:
        raise PolicyError(problems, where)
    return policy


def _convert(data: Any, where: str) -> Policy:
    """Convert a dict to a Policy; a type error names its key path (group names included)."""
    problems: list[tuple[str, str]] = []

    def convert(obj: Any, typ: type, prefix: str) -> Any:
        try:
            return msgspec.convert(obj, typ)
        except msgspec.ValidationError as exc:
            msg = str(exc)
            m = _LOC.search(msg)
            path = m.group(1).lstrip(".").replace("[", ".").replace("]", "") if m else ""
            problems.append((f"{prefix}{path}".rstrip("."), _LOC.sub("", msg).strip()))
            return None

    groups_in = data.get("groups", {}) if isinstance(data, dict) else {}
    groups: dict[str, GroupPolicy] = {}
    if isinstance(groups_in, dict):
        for name, g in groups_in.items():
            gp = convert(g, GroupPolicy, f"groups.{name}.")
            if gp is not None:
                groups[str(name)] = gp
        data = {k: v for k, v in data.items() if k != "groups"}
    policy = convert(data, Policy, "")
    if problems:
        raise PolicyError(problems, where)
    return msgspec.structs.replace(policy, groups=groups)


def _validate(policy: Policy) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []

    def rules(prefix: str, r: Rules) -> None:
        for name in RULES:
            rw = getattr(r, name)
            if rw is None:
                continue
            if not -1 <= rw.level <= MAX_LEVEL:
                problems.append((f"{prefix}rules.{name}.level", f"must be -1 (off) .. {MAX_LEVEL}"))
            if not math.isfinite(rw.weight):
                problems.append((f"{prefix}rules.{name}.weight", "must be a finite number"))

    def params(prefix: str, p: Policy | GroupPolicy) -> None:
        if p.preset is not None and p.preset not in PRESETS:
            problems.append((f"{prefix}preset", f"unknown preset; one of {sorted(PRESETS)}"))
        for name in ("lookahead_min", "qt_horizon_min", "batch_max_wait_min", "setup_switch_lots"):
            v = getattr(p, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                problems.append((f"{prefix}{name}", "must be a finite number >= 0"))
        for name in ("qt_gate_factor", "balance_target_wait_min", "deliver_flow_factor",
                     "slack_flow_factor"):
            v = getattr(p, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                problems.append((f"{prefix}{name}", "must be a finite number > 0"))
        if p.batch_fill is not None and not 0.0 <= p.batch_fill <= 1.0:
            problems.append((f"{prefix}batch_fill", "must be between 0 and 1"))
        rules(prefix, p.rules)

    if not 1 <= policy.max_list <= 1000:
        problems.append(("max_list", "must be 1 .. 1000"))
    params("", policy)
    for g, gp in policy.groups.items():
        params(f"groups.{g}.", gp)
    return problems


def _effective(policy: Policy, gp: GroupPolicy | None) -> _Preset:
    """Return a group's resolved rules and parameters: preset, then fab-wide, then group overrides."""
    own_preset = gp is not None and gp.preset is not None
    base = PRESETS[gp.preset if own_preset else policy.preset]
    rules = dict(base.rules)
    layers: list[Policy | GroupPolicy] = [] if own_preset else [policy]
    if gp is not None:
        layers.append(gp)
    vals = {k: getattr(base, k) for k in _PARAMS}
    for layer in layers:
        for name in RULES:
            rw = getattr(layer.rules, name)
            if rw is not None:
                rules[name] = rw
        for k in _PARAMS:
            v = getattr(layer, k)
            if v is not None:
                vals[k] = v
    return _Preset(rules=rules, **vals)


def compile_policy(policy: Policy, model: FabModel, *, strict: bool = True) -> PolicyArrays:
    """Resolve the policy for every tool group of the model.

    Group overrides naming a group the model does not have are errors when
    `strict`, else ignored (they apply once master data brings the group).
    """
    unknown = [g for g in policy.groups if g not in model.group_index]
    if unknown and strict:
        raise PolicyError([(f"groups.{g}", "no such tool group in the fab model") for g in unknown])
    G, R = model.n_groups, len(RULES)
    level = np.full((G, R), -1, np.int8)
    weight = np.zeros((G, R))
    cols = {k: np.zeros(G, dtype=np.bool_ if k == "qt_gate" else np.float64) for k in _PARAMS}
    for g, name in enumerate(model.group_ids):
        eff = _effective(policy, policy.groups.get(name))
        for r, rule in enumerate(RULES):
            rw = eff.rules[rule]
            on = rw.level >= 0 and rw.weight != 0.0
            level[g, r] = rw.level if on else -1
            weight[g, r] = rw.weight if on else 0.0
        for k in _PARAMS:
            cols[k][g] = getattr(eff, k)
    return PolicyArrays(level=level, weight=weight, **cols)


def n_levels(pa: PolicyArrays) -> int:
    """Return the number of lexicographic levels in use (at least 1)."""
    return max(1, int(pa.level.max(initial=-1)) + 1)


_SMT2020_RANKS = {"rank_HP": "priority", "rank_RSETUP": "setup", "rank_FIFO": "fifo",
                  "rank_CR": "cr"}


def smt2020_policy(dataset: Any) -> Policy:
    """Return the dispatch rules an SMT2020 dataset gives its tool families, as a Policy.

    RULE rule_HotLotFIRST puts hot lots first, rule_LSSU the least setup first;
    FWLRANK's ranks follow as levels (rank_HP priority, rank_RSETUP setup,
    rank_FIFO arrival); families with a setup group keep their minimum runs
    first. Parameters are the "fifo" preset's (batches go at their minimum).
    """
    groups: dict[str, GroupPolicy] = {}
    for name, fam in dataset.families.items():
        order: list[str] = ["minrun"] if fam.setup_group else []
        if fam.rule == "rule_LSSU":
            order.append("setup")
        order.append("hot")
        for rank in fam.ranking:
            rule = _SMT2020_RANKS.get(rank)
            if rule is not None and rule not in order:
                order.append(rule)
        if "fifo" not in order:
            order.append("fifo")
        rules = {r: RuleWeight(level=order.index(r)) if r in order else _OFF for r in RULES}
        groups[name] = GroupPolicy(preset="fifo", rules=Rules(**rules))
    return load_policy(Policy(preset="fifo", groups=groups))
