"""The per-candidate kernels the fab simulation calls from its own @njit code keep their signatures."""

from __future__ import annotations

import numpy as np
from numba import njit

from dispatch.config import compile_policy, load_policy
from dispatch.scorer import (
    BLOCK_BATCH_WAIT,
    BLOCK_OK,
    BLOCK_QT_GATE,
    Dispatcher,
    block_code,
    candidate_key,
    key_better,
)
from tests.dispatch.fabs import line


@njit(cache=True)
def _blocks():
    base = block_code(0.0, False, False, 1.0, 0.0, -1.0, 100, 50, 60, 0.0, 1.0, 60.0)
    nothing_upstream = block_code(0.0, False, False, 1.0, 0.0, -1.0, 100, 50, 60, 0.0, 1.0, 60.0, 0)
    gate = block_code(0.0, False, True, 1.0, 60.0, 90.0, 0, 0, 0, 0.0, 1.0, 60.0)
    return base, nothing_upstream, gate


def test_block_code_call_forms():
    assert _blocks() == (BLOCK_BATCH_WAIT, BLOCK_OK, BLOCK_QT_GATE)


@njit(cache=True)
def _key(level, weight, deliver_flow_factor, slack_flow_factor, out):
    feat = np.zeros(11)
    candidate_key(0.0, level, weight, 120.0, 240.0, deliver_flow_factor, slack_flow_factor,
                  1, 20, 600.0, -90.0, False, np.inf, 130.0,
                  0, 0, 0.0, 0.0, 0.0, feat, out)
    return feat


def test_candidate_key_equals_the_dispatcher_key_for_the_same_lot():
    m = line()
    m.add_lot("x", "PA", hot=1, priority=20, due_min=600.0, arrival_min=-90.0)
    policy = load_policy({"preset": "fabd"})
    d = Dispatcher(m, policy)
    out = d.score(0.0)
    pa = compile_policy(policy, m)
    g = m.group_index["G"]
    key = np.zeros(out.key.shape[2])
    feat = _key(pa.level[g], pa.weight[g], pa.deliver_flow_factor[g], pa.slack_flow_factor[g], key)
    t = m.tool("G1")
    assert key.tolist() == out.key[t, 0].tolist()
    assert feat.tolist() == out.feat[t, 0].tolist()
    assert key_better(key, -90.0, 600.0, 0, key, -80.0, 600.0, 1)
