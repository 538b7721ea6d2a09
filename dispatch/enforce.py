"""Track-in enforcement: the checks before any lot starts on a tool; a refusal is a result, not an error.

`check_track_in(model, lot_id, tool_id, ppid, now_min)` answers whether the
lot may start on the tool with that recipe now. A refusal carries a reason
code (`Refusal`), details for the operator and, when the lot's queue time is
exceeded, `action="hold"` with the hold reason the daemon applies. The result
is a msgspec Struct the daemon publishes as an event as it is.

Checks, in order (the first that fails is reported):
lot and tool known; tool up (E10 productive/standby) and not inhibited; lot
waiting (not running or finished) and not on hold; the recipe is the one of
the lot's current step (no out-of-sequence processing); the lot's queue-time
window not exceeded; the tool belongs to the step's tool group and is
qualified for the recipe; the recipe version is the one the step names and the
approved body on record is that version's; the body on the tool was verified (a
RecipeReport) and matches the approved checksum.
"""

from __future__ import annotations

import enum

import msgspec

from dispatch.model import E10_FROM_CODE, FabModel, LotState

__all__ = ["Refusal", "TrackInResult", "check_track_in", "track_in"]


class Refusal(enum.StrEnum):
    """Why a track-in was refused."""

    UNKNOWN_LOT = "unknown_lot"
    UNKNOWN_TOOL = "unknown_tool"
    UNKNOWN_RECIPE = "unknown_recipe"
    TOOL_DOWN = "tool_down"
    TOOL_INHIBITED = "tool_inhibited"
    LOT_NOT_WAITING = "lot_not_waiting"
    LOT_ON_HOLD = "lot_on_hold"
    OUT_OF_SEQUENCE = "out_of_sequence"
    QUEUE_TIME_EXCEEDED = "queue_time_exceeded"
    WRONG_TOOL_GROUP = "wrong_tool_group"
    NOT_QUALIFIED = "not_qualified"
    RECIPE_VERSION_MISMATCH = "recipe_version_mismatch"
    RECIPE_NOT_VERIFIED = "recipe_not_verified"
    RECIPE_CHECKSUM_MISMATCH = "recipe_checksum_mismatch"


class TrackInResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a track-in request; publish it as the track-in event."""

    ok: bool
    lot_id: str
    tool_id: str
    ppid: str
    step: str = ""                   # "route:position" of the lot's current step
    reason: Refusal | None = None    # None when ok
    detail: str = ""
    action: str = "none"             # "none" | "hold": the daemon puts the lot on hold
    hold_reason: str = ""


def check_track_in(model: FabModel, lot_id: str, tool_id: str, ppid: str, now_min: float, *,
                   recipe_version: int | None = None) -> TrackInResult:
    """Check every process rule before `lot_id` starts on `tool_id` with recipe `ppid`.

    `recipe_version` is the version the host would run; None takes the version
    from the tool's last recipe report (0 there means unknown: not compared).
    """

    def refuse(reason: Refusal, detail: str, step: str = "", **kw: str) -> TrackInResult:
        return TrackInResult(ok=False, lot_id=lot_id, tool_id=tool_id, ppid=ppid, step=step,
                             reason=reason, detail=detail, **kw)

    i = model.lot_index.get(lot_id)
    if i is None:
        return refuse(Refusal.UNKNOWN_LOT, f"lot {lot_id} is not in the fab model")
    t = model.tool_index.get(tool_id)
    if t is None:
        return refuse(Refusal.UNKNOWN_TOOL, f"tool {tool_id} is not in the fab model")
    e10 = E10_FROM_CODE[int(model.tool_e10[t])]
    if int(model.tool_e10[t]) > 1:
        return refuse(Refusal.TOOL_DOWN, f"tool {tool_id} is {e10.value}")
    if bool(model.tool_inhibited[t]):
        return refuse(Refusal.TOOL_INHIBITED, f"tool {tool_id} is inhibited")
    state = LotState(int(model.lot_state[i]))
    if state != LotState.WAITING:
        return refuse(Refusal.LOT_NOT_WAITING, f"lot {lot_id} is {state.name.lower()}")
    s = int(model.lot_step[i])
    step = model.step_name(s)
    if bool(model.lot_hold[i]):
        why = model.hold_reason.get(i, "")
        return refuse(Refusal.LOT_ON_HOLD, f"lot {lot_id} is on hold" + (f": {why}" if why else ""),
                      step)
    r = model.recipe_index.get(ppid)
    if r is None:
        return refuse(Refusal.UNKNOWN_RECIPE, f"recipe {ppid} is not in the fab model", step)
    want = int(model.step_recipe[s])
    if r != want:
        return refuse(Refusal.OUT_OF_SEQUENCE,
                      f"lot {lot_id} is at step {step}, which runs {model.recipe_ids[want]}, not {ppid}",
                      step)
    qt_step = int(model.lot_qt_step[i])
    deadline = float(model.lot_qt_deadline_min[i])
    if qt_step >= 0 and now_min > deadline:
        over = now_min - deadline
        why = (f"queue time to step {model.step_name(qt_step)} exceeded by {over:.1f} min "
               f"at step {step}")
        return refuse(Refusal.QUEUE_TIME_EXCEEDED, f"lot {lot_id}: {why}", step,
                      action="hold", hold_reason=why)
    g_step, g_tool = int(model.step_group[s]), int(model.tool_group[t])
    if g_step != g_tool:
        return refuse(Refusal.WRONG_TOOL_GROUP,
                      f"step {step} runs on {model.group_ids[g_step]}, tool {tool_id} is in "
                      f"{model.group_ids[g_tool]}", step)
    if not model.qualified(t, r):
        return refuse(Refusal.NOT_QUALIFIED, f"tool {tool_id} is not qualified for {ppid}", step)
    approved_v = int(model.step_recipe_version[s])
    report = model.tool_recipe_report.get((t, r))
    version = recipe_version if recipe_version is not None else (report[1] if report else 0)
    if version and version != approved_v:
        return refuse(Refusal.RECIPE_VERSION_MISMATCH,
                      f"{ppid} version {version} on tool {tool_id}, approved is {approved_v}", step)
    # the body of the version the step names (a newer approved version may exist: an
    # engineering change the route has not taken up yet)
    approved_sum = model.approved_body(r, approved_v)
    if report is not None and report[0] != approved_sum:
        other = model.body_version(r, report[0])
        if other:
            return refuse(Refusal.RECIPE_VERSION_MISMATCH,
                          f"step {step} runs {ppid} v{approved_v}, tool {tool_id} holds the "
                          f"v{other} body", step)
    if report is None or not approved_sum:
        what = (f"no approved body checksum for v{approved_v}" if not approved_sum
                else f"body on tool {tool_id} not verified (upload it first)")
        return refuse(Refusal.RECIPE_NOT_VERIFIED, f"{ppid}: {what}", step)
    if report[0] != approved_sum:
        return refuse(Refusal.RECIPE_CHECKSUM_MISMATCH,
                      f"{ppid} body on tool {tool_id} has sha256 {report[0][:12]}..., approved "
                      f"{approved_sum[:12]}...", step)
    return TrackInResult(ok=True, lot_id=lot_id, tool_id=tool_id, ppid=ppid, step=step)


def track_in(model: FabModel, lot_id: str, tool_id: str, ppid: str, now_min: float, *,
             recipe_version: int | None = None, duration_min: float | None = None
             ) -> TrackInResult:
    """Check, then apply: start the lot on the tool, or put it on hold when the result says so."""
    res = check_track_in(model, lot_id, tool_id, ppid, now_min, recipe_version=recipe_version)
    if res.ok:
        model.start_lot(lot_id, tool_id, now_min, duration_min)
    elif res.action == "hold":
        model.set_hold(lot_id, True, res.hold_reason)
    return res
