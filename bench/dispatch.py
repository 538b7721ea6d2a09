"""Dispatch scorer: full re-score of SMT2020 HVLM (1,443 tools, 2,255 lots) and a 10x fab vs the Python reference."""

from __future__ import annotations

import time

import numpy as np
from numba import njit

from bench.common import best_of, emit, progress, standard_args
from dispatch import smt2020
from dispatch.config import Policy, compile_policy
from dispatch.model import FabModel, from_smt2020
from dispatch.reference import reference_lists
from dispatch.scorer import Dispatcher, assign, prepare, score_tool, tool_available
from dispatch.smt2020 import DEFAULT_DATASET

NAME = "dispatch"
DEFAULT_DATA = str(DEFAULT_DATASET)


@njit(cache=True)
def _score_each(now_min, fab, pol, ws, out_n, out_lot, out_key):
    """Rank every available tool on its own (no sharing between identical tools)."""
    prepare(now_min, fab, pol, ws)
    for t in range(fab.tool_group.shape[0]):
        if tool_available(t, now_min, fab, pol):
            out_n[t] = score_tool(t, now_min, fab, pol, ws, out_lot[t], out_key[t])
        else:
            out_n[t] = 0


@njit(cache=True)
def _repeat_prepare(n, now_min, fab, pol, ws):
    for _ in range(n):
        prepare(now_min, fab, pol, ws)


@njit(cache=True)
def _repeat_score_tool(n, t, now_min, fab, pol, ws, out_lot, out_key):
    got = 0
    for _ in range(n):
        got += score_tool(t, now_min, fab, pol, ws, out_lot, out_key)
    return got


def _check_same(d: Dispatcher, ref: dict) -> None:
    out = d._out
    for t in range(d.model.n_tools):
        want = [row[0] for row in ref.get(t, [])]
        if out.lot[t, : out.n[t]].tolist() != want:
            raise SystemExit(f"kernel and reference disagree on tool {d.model.tool_ids[t]}")


def _run_scale(model: FabModel, policy: Policy, tag: str, *, repeat: int, reference: bool,
               js: bool) -> float:
    """Time one fab's full re-score and its parts; emit the lines; return the re-score seconds."""
    progress(f"{tag}: {model.n_tools} tools, {model.n_lots} lots; compiling and warming")
    d = Dispatcher(model, policy)
    d.score(0.0)
    t_kernel = best_of(lambda: d.score(0.0), repeat=repeat)
    fab, pol, ws = d._ensure()
    out = d._out
    t_each = best_of(lambda: _score_each(0.0, fab, pol, ws, out.n, out.lot, out.key),
                     repeat=max(3, repeat // 5))
    d.score(0.0)
    _repeat_prepare(1, 0.0, fab, pol, ws)
    n_prep = 20
    t_prep = best_of(lambda: _repeat_prepare(n_prep, 0.0, fab, pol, ws), repeat=repeat) / n_prep
    lots = np.zeros(policy.max_list, np.int32)
    keys = np.zeros((policy.max_list, ws.lot_base.shape[1]))
    busiest = int(np.argmax(np.bincount(fab.tool_group)))
    t0 = int(np.flatnonzero(fab.tool_group == busiest)[0])
    n_cand = int(ws.group_ptr[busiest + 1] - ws.group_ptr[busiest])
    _repeat_score_tool(1, t0, 0.0, fab, pol, ws, lots, keys)
    n_one = 200
    t_one = best_of(lambda: _repeat_score_tool(n_one, t0, 0.0, fab, pol, ws, lots, keys),
                    repeat=repeat) / n_one
    t_assign = best_of(lambda: d.assign(0.0), repeat=max(3, repeat // 3))
    n_assigned = sum(len(v) for v in d.assign(0.0).values())
    lot_tool = d._lot_tool
    t_assign_k = best_of(lambda: assign(0.0, fab, pol, ws, lot_tool), repeat=max(3, repeat // 3))
    if reference:
        progress(f"{tag}: plain-Python reference (slow)")
        t = time.perf_counter()
        ref = reference_lists(0.0, fab, compile_policy(policy, model), policy.max_list)
        ref_s = time.perf_counter() - t
        _check_same(d, ref)
        emit(NAME, f"{tag}_full_rescore_ms", t_kernel * 1e3, "ms", "python_reference_ms",
             ref_s * 1e3, lower_is_better=True, as_json=js)
        emit(NAME, f"{tag}_speedup_vs_reference", ref_s / t_kernel, "x", "target_x", 100.0,
             as_json=js)
    emit(NAME, f"{tag}_assign_{n_assigned}_lots_kernel_ms", t_assign_k * 1e3, "ms",
         f"{tag}_full_rescore_ms", t_kernel * 1e3, lower_is_better=True, as_json=js)
    emit(NAME, f"{tag}_assign_{n_assigned}_lots_with_ids_ms", t_assign * 1e3, "ms",
         f"{tag}_assign_kernel_ms", t_assign_k * 1e3, lower_is_better=True, as_json=js)
    emit(NAME, f"{tag}_full_rescore_unshared_ms", t_each * 1e3, "ms", f"{tag}_full_rescore_ms",
         t_kernel * 1e3, lower_is_better=True, as_json=js)
    emit(NAME, f"{tag}_prepare_us", t_prep * 1e6, "us", f"{tag}_full_rescore_us",
         t_kernel * 1e6, lower_is_better=True, as_json=js)
    emit(NAME, f"{tag}_score_one_tool_{n_cand}_candidates_us", t_one * 1e6, "us",
         f"{tag}_prepare_us", t_prep * 1e6, lower_is_better=True, as_json=js)
    return t_kernel


def _heterogeneous(model: FabModel, seed: int = 1, drop: float = 0.1) -> FabModel:
    """Take each tool's qualification away for a random `drop` share of its recipes.

    Real fabs qualify tools of one group for different recipe subsets; then no
    two tools share a ranking and every tool is scored on its own.
    """
    rnd = np.random.default_rng(seed)
    for t, name in enumerate(model.tool_ids):
        quals = model._tool_quals[t]
        if len(quals) > 1:
            gone = rnd.random(len(quals)) < drop
            gone[rnd.integers(len(quals))] = False
            model.qualify(name, [model.recipe_ids[r] for r, g in zip(quals, gone, strict=True) if g],
                          qualified=False)
    return model


def main(argv: list[str] | None = None) -> int:
    args = standard_args(NAME, argv, lambda p: (
        p.add_argument("--data", default=DEFAULT_DATA, help="SMT2020 dataset folder (HVLM)"),
        p.add_argument("--policy", default="fabd", choices=["fabd", "fifo", "cr", "deliver"]),
        p.add_argument("--scale", type=int, default=10, help="size of the scaled fab"),
    ))
    js = args.json
    repeat = 5 if args.quick else 30
    progress(f"loading {args.data}")
    ds = smt2020.load(args.data)
    policy = Policy(preset=args.policy)
    scaled = f"hvlm{args.scale}x"
    t1 = _run_scale(from_smt2020(ds), policy, "hvlm", repeat=repeat, reference=True, js=js)
    if not args.quick:
        progress(f"{scaled}: the reference takes about a minute at 10x")
    tn = _run_scale(from_smt2020(ds, scale=args.scale), policy, scaled, repeat=repeat,
                    reference=not args.quick, js=js)
    th = _run_scale(_heterogeneous(from_smt2020(ds)), policy, "hvlm_mixed_quals", repeat=repeat,
                    reference=True, js=js)
    emit(NAME, "hvlm_mixed_quals_full_rescore_ms_vs_hvlm", th * 1e3, "ms", "hvlm_full_rescore_ms",
         t1 * 1e3, lower_is_better=True, as_json=js)
    emit(NAME, f"{scaled}_full_rescore_ms_vs_hvlm", tn * 1e3, "ms", "hvlm_full_rescore_ms",
         t1 * 1e3, lower_is_better=True, as_json=js)
    emit(NAME, "hvlm_full_rescore_ms_vs_target", t1 * 1e3, "ms", "target_ms", 2.0, lower_is_better=True, as_json=js)
    emit(NAME, f"{scaled}_full_rescore_ms_vs_target", tn * 1e3, "ms", "target_ms",
         2.0 * args.scale, lower_is_better=True, as_json=js)
    return 0
