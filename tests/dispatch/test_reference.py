"""The numba kernel ranks exactly like the plain-Python reference, on hundreds of random fabs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dispatch.config import PRESETS, RULES, compile_policy, load_policy
from dispatch.model import random_fab
from dispatch.reference import reference_lists
from dispatch.scorer import Dispatcher, new_workspace, prepare, score_tool


def random_policy(rnd: random.Random) -> dict:
    """A random valid policy: preset, levels and weights, parameters, one group override."""
    rules = {r: {"level": rnd.choice([-1, 0, 1, 2, 3]), "weight": rnd.choice([0.5, 1.0, 2.0, -1.0])}
             for r in RULES if rnd.random() < 0.6}
    return {
        "preset": rnd.choice(sorted(PRESETS)), "max_list": rnd.choice([1, 3, 8, 50]),
        "rules": rules, "qt_horizon_min": rnd.choice([0.0, 30.0, 120.0]),
        "qt_gate": rnd.random() < 0.5, "deliver_flow_factor": rnd.choice([0.5, 1.6, 3.0]),
        "slack_flow_factor": rnd.choice([1.0, 2.1]), "batch_fill": rnd.choice([0.0, 0.75, 1.0]),
        "batch_max_wait_min": rnd.choice([0.0, 60.0]), "lookahead_min": rnd.choice([0.0, 5.0]),
        "setup_switch_lots": rnd.choice([0.0, 1.0, 5.0]),
        "groups": {"G1": {"preset": rnd.choice(sorted(PRESETS))}} if rnd.random() < 0.3 else {},
    }


@pytest.mark.parametrize("block", range(4))
def test_kernel_equals_reference_on_random_fabs(block):
    compared = nonempty = 0
    for seed in range(block * 100, block * 100 + 100):
        rnd = random.Random(seed)
        m = random_fab(seed, n_groups=rnd.randint(2, 8), n_lots=rnd.randint(1, 80),
                       tools_per_group=(1, rnd.randint(1, 5)))
        policy = load_policy(random_policy(rnd))
        now = rnd.choice([0.0, 20.0, 90.0])
        d = Dispatcher(m, policy)
        out = d.score(now)
        ref = reference_lists(now, m.arrays(), compile_policy(policy, m), policy.max_list)
        for t in range(m.n_tools):
            got = out.lot[t, : out.n[t]].tolist()
            want = [row[0] for row in ref.get(t, [])]
            assert got == want, (seed, m.tool_ids[t])
            for k, (_, keys, feats) in enumerate(ref.get(t, [])):
                assert out.key[t, k].tolist() == list(keys), (seed, t, k)
                assert out.feat[t, k].tolist() == feats, (seed, t, k)
            compared += 1
            nonempty += bool(want)
    assert compared > 300 and nonempty > 100   # the comparison saw real lists


def test_single_tool_entry_point_matches_the_batch_one():
    """score_tool (what the simulation calls per free tool) gives the same list as score_all."""
    m = random_fab(7, n_groups=5, n_lots=60, tools_per_group=(2, 4))
    policy = load_policy({"preset": "fabd", "max_list": 5})
    d = Dispatcher(m, policy)
    out = d.score(10.0)
    fab, pol = m.arrays(), compile_policy(policy, m)
    ws = new_workspace(fab, pol)
    prepare(10.0, fab, pol, ws)
    lots = np.zeros(5, np.int32)
    keys = np.zeros((5, ws.lot_base.shape[1]))
    for t in np.flatnonzero(out.n):
        n = score_tool(int(t), 10.0, fab, pol, ws, lots, keys)
        assert lots[:n].tolist() == out.lot[t, : out.n[t]].tolist()


@pytest.mark.parametrize("block", range(2))
def test_assignment_equals_reference_and_never_gives_a_lot_twice(block):
    from dispatch.reference import reference_assign

    assigned_total = 0
    for seed in range(1000 + block * 100, 1000 + block * 100 + 100):
        rnd = random.Random(seed)
        m = random_fab(seed, n_groups=rnd.randint(2, 6), n_lots=rnd.randint(1, 60),
                       tools_per_group=(1, rnd.randint(1, 6)))
        policy = load_policy(random_policy(rnd))
        d = Dispatcher(m, policy)
        got = d.assign(30.0)
        want = reference_assign(30.0, m.arrays(), compile_policy(policy, m))
        flat = {m.lot_ids[i]: m.tool_ids[t] for i, t in want.items()}
        assert {lot: tool for tool, lots in got.items() for lot in lots} == flat, seed
        assigned_total += len(flat)
    assert assigned_total > 50


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_large_groups_of_all_different_tools_match_the_reference(seed):
    """Groups with more distinct tools than the kernel shares rankings for (sorted queues, caps)."""
    from dispatch.reference import reference_assign

    rnd = random.Random(seed)
    m = random_fab(seed, n_groups=3, tools_per_group=(20, 40), n_lots=150, route_len=(8, 14))
    for t, name in enumerate(m.tool_ids):      # every tool its own qualification subset
        quals = [m.recipe_ids[r] for r in m._tool_quals[t]]
        if len(quals) > 2:
            m.qualify(name, rnd.sample(quals, k=len(quals) // 3), qualified=False)
    for preset in ("fabd", "fifo", "cr"):
        policy = load_policy({"preset": preset, "max_list": 12, "batch_fill": 0.0})
        d = Dispatcher(m, policy)
        out = d.score(15.0)
        ref = reference_lists(15.0, m.arrays(), compile_policy(policy, m), 12)
        for t in range(m.n_tools):
            assert out.lot[t, : out.n[t]].tolist() == [row[0] for row in ref.get(t, [])], (preset, t)
        got = {lot: tool for tool, lots in d.assign(15.0).items() for lot in lots}
        want = reference_assign(15.0, m.arrays(), compile_policy(policy, m))
        assert got == {m.lot_ids[i]: m.tool_ids[t] for i, t in want.items()}, preset
        assert len(got) > 10
