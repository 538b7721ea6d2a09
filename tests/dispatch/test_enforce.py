"""Track-in enforcement: every refusal reason is reachable and says what is wrong."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from dispatch.enforce import Refusal, check_track_in, track_in
from dispatch.model import FabModel, LotState
from equipment.events import E10State
from tests.dispatch.fabs import line

BODY = b"RECIPE A-1 v2: 60 s at 900 C"
GOOD = hashlib.sha256(BODY).hexdigest()
BAD = hashlib.sha256(b"edited on the tool").hexdigest()


def fab() -> FabModel:
    """The test line with recipe A-1 approved at version 2 and verified on G1."""
    m = line(qt_min=60.0)
    m.approve_recipe("A-1", 2, GOOD)
    m.record_tool_recipe("G1", "A-1", GOOD, 2)
    m.add_lot("L", "PA")
    return m


def refused(m: FabModel, **kw) -> tuple[Refusal | None, str]:
    args = {"lot_id": "L", "tool_id": "G1", "ppid": "A-1", "now_min": 0.0} | kw
    res = check_track_in(m, **args)
    assert res.ok == (res.reason is None)
    return res.reason, res.detail


def test_a_lot_that_meets_every_rule_is_accepted():
    m = fab()
    res = check_track_in(m, "L", "G1", "A-1", 0.0)
    assert res.ok and res.step == "A:1" and res.reason is None


@pytest.mark.parametrize(("setup", "kw", "reason", "says"), [
    (None, {"lot_id": "nope"}, Refusal.UNKNOWN_LOT, "nope"),
    (None, {"tool_id": "nope"}, Refusal.UNKNOWN_TOOL, "nope"),
    (None, {"ppid": "no-such-recipe"}, Refusal.UNKNOWN_RECIPE, "no-such-recipe"),
    (lambda m: m.set_tool_state("G1", E10State.UNSCHEDULED_DOWN), {}, Refusal.TOOL_DOWN,
     "unscheduled_down"),
    (lambda m: m.set_inhibit("G1", True), {}, Refusal.TOOL_INHIBITED, "inhibited"),
    (lambda m: m.start_lot("L", "G2", 0.0), {}, Refusal.LOT_NOT_WAITING, "running"),
    (lambda m: m.set_hold("L", True, "SPC rule 1 on CD"), {}, Refusal.LOT_ON_HOLD, "SPC rule 1"),
    (None, {"ppid": "A-2"}, Refusal.OUT_OF_SEQUENCE, "runs A-1, not A-2"),
    (None, {"tool_id": "N1a"}, Refusal.WRONG_TOOL_GROUP, "runs on G"),
    (lambda m: m.qualify("G1", ["A-1"], qualified=False), {}, Refusal.NOT_QUALIFIED, "not qualified"),
    (None, {"recipe_version": 1}, Refusal.RECIPE_VERSION_MISMATCH, "approved is 2"),
    (lambda m: m.record_tool_recipe("G1", "A-1", GOOD, 3), {}, Refusal.RECIPE_VERSION_MISMATCH,
     "version 3"),
    (None, {"tool_id": "G2"}, Refusal.RECIPE_NOT_VERIFIED, "not verified"),
    (lambda m: m.record_tool_recipe("G1", "A-1", BAD, 2), {}, Refusal.RECIPE_CHECKSUM_MISMATCH,
     BAD[:12]),
])
def test_each_refusal_reason(setup, kw, reason, says):
    m = fab()
    if setup is not None:
        setup(m)
    got, detail = refused(m, **kw)
    assert got == reason
    assert says in detail


def test_out_of_sequence_after_the_lot_moved_on():
    m = fab()
    m.start_lot("L", "G1", 0.0)
    m.complete_step("L", 60.0)
    assert refused(m, ppid="A-1", now_min=61.0)[0] == Refusal.OUT_OF_SEQUENCE


def test_unapproved_recipe_body_cannot_run():
    m = fab()
    m.add_recipe("A-3", 1)        # no approved checksum
    m.record_tool_recipe("G1", "A-3", GOOD, 1)
    m.add_lot("L3", "PA", step=3)
    reason, detail = refused(m, lot_id="L3", ppid="A-3")
    assert reason == Refusal.RECIPE_NOT_VERIFIED and "no approved body checksum" in detail


def test_queue_time_exceeded_says_hold_with_a_reason_and_track_in_holds_the_lot():
    m = fab()
    m.start_lot("L", "G1", 0.0)
    m.complete_step("L", 60.0)                   # window to A:2 closes at 120
    m.approve_recipe("A-2", 1, GOOD)
    m.record_tool_recipe("N1a", "A-2", GOOD, 1)
    assert check_track_in(m, "L", "N1a", "A-2", 119.0).ok
    res = track_in(m, "L", "N1a", "A-2", 130.0)
    assert res.reason == Refusal.QUEUE_TIME_EXCEEDED and res.action == "hold"
    assert "exceeded by 10.0 min" in res.hold_reason
    assert bool(m.lot_hold[m.lot("L")]) and m.hold_reason[m.lot("L")] == res.hold_reason
    # the refusal is an event payload as it is
    assert msgspec.json.decode(msgspec.json.encode(res))["reason"] == "queue_time_exceeded"


def test_track_in_starts_the_lot_only_when_accepted():
    m = fab()
    assert track_in(m, "L", "G2", "A-1", 0.0).reason == Refusal.RECIPE_NOT_VERIFIED
    assert m.lot_state[m.lot("L")] == LotState.WAITING
    assert track_in(m, "L", "G1", "A-1", 0.0).ok
    assert m.lot_state[m.lot("L")] == LotState.RUNNING
    assert m.tool_e10[m.tool("G1")] == 0   # productive


def test_every_reason_is_covered_here():
    import tests.dispatch.test_enforce as me

    text = open(me.__file__).read()
    assert all(f"Refusal.{r.name}" in text for r in Refusal)
