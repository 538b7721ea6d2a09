"""The GEM driver profile, config validation and message helpers (pure, no sockets)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from equipment.events import (
    ControlState,
    ControlStateChanged,
    E10State,
    E10StateChanged,
    ProcessCompleted,
    ProcessStarted,
)
from equipment.gem import messages as m
from equipment.gem.config import GemToolConfig
from equipment.gem.errors import GemConfigError, GemProtocolError
from equipment.gem.messages import recipe_report
from equipment.gem.profile import (
    FABD_SIM,
    EventLink,
    EventTranslator,
    GemDriverProfile,
    ReportDef,
    get_profile,
)
from equipment.hsms.config import HsmsConfig
from equipment.secs import U1, U4, A, B, L, decode, encode


def test_fabd_sim_profile_turns_a_completed_lot_into_one_event_with_its_parameters() -> None:
    t = EventTranslator("ETCH01", FABD_SIM)
    values = t.values([(3002, ["LOT-7", "ETCH-A", 65.1, 13.2, 301.0, 119.5, 1])])
    [event] = t.translate(3002, values, ts=1.0)
    assert event == ProcessCompleted(
        tool_id="ETCH01", ts=1.0, lot_id="LOT-7", recipe_id="ETCH-A", ok=False,
        parameters={"Temperature_C": 65.1, "Pressure_Pa": 13.2, "RFPower_W": 301.0,
                    "Thickness_nm": 119.5})


def test_fabd_sim_profile_maps_start_e10_and_control_state_events() -> None:
    t = EventTranslator("ETCH01", FABD_SIM)
    assert t.translate(3001, t.values([(3001, ["L1", "R1"])]), ts=1.0) == [
        ProcessStarted(tool_id="ETCH01", ts=1.0, lot_id="L1", recipe_id="R1")]
    assert t.translate(3003, t.values([(3003, ["unscheduled_down", "door"])]), ts=1.0) == [
        E10StateChanged(tool_id="ETCH01", ts=1.0, state=E10State.UNSCHEDULED_DOWN,
                        reason="door")]
    assert t.translate(3004, t.values([(3004, [5])]), ts=1.0) == [
        ControlStateChanged(tool_id="ETCH01", ts=1.0, state=ControlState.ONLINE_REMOTE)]
    # Unknown state values and unmapped CEIDs produce nothing rather than garbage.
    assert t.translate(3003, t.values([(3003, ["coffee_break", ""])])) == []
    assert t.translate(9999, {}) == []


def test_a_site_can_write_its_own_profile_in_toml() -> None:
    text = b"""
name = "litho-x"
alids = [10, 11]
ceids_process_started = [200]
vid_lot_id = 1
vid_e10_state = 2
ceids_e10_changed = [201]
e10_values = { "PRD" = "productive", "SBY" = "standby" }
[[reports]]
rptid = 1
vids = [1, 2]
[[links]]
ceid = 200
rptids = [1]
"""
    profile = msgspec.toml.decode(text, type=GemDriverProfile)
    profile.validate()
    t = EventTranslator("LITHO1", profile)
    assert t.translate(201, t.values([(1, ["L9", "PRD"])]), ts=1.0) == [
        E10StateChanged(tool_id="LITHO1", ts=1.0, state=E10State.PRODUCTIVE)]
    assert msgspec.json.decode(msgspec.json.encode(FABD_SIM), type=GemDriverProfile) == FABD_SIM


def test_profile_with_a_link_to_an_undefined_report_is_rejected() -> None:
    bad = GemDriverProfile(name="bad", reports=[ReportDef(rptid=1, vids=[1])],
                           links=[EventLink(ceid=10, rptids=[2])])
    with pytest.raises(GemConfigError, match="undefined RPTIDs"):
        bad.validate()
    with pytest.raises(GemConfigError, match="unknown GEM driver profile"):
        get_profile("nope")


def test_tool_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"profile: unknown GEM driver profile 'nope'"):
        GemToolConfig(tool_id="T1", profile="nope")
    with pytest.raises(ValueError, match="tool_id: required"):
        GemToolConfig(tool_id="")
    with pytest.raises(ValueError, match=r"hsms\.mode"):
        GemToolConfig(tool_id="T1", hsms=HsmsConfig(mode="passive"))
    with pytest.raises(msgspec.ValidationError, match=r"comm_retry_s.*\$\[0\]"):
        msgspec.json.decode(b'[{"tool_id": "T1", "comm_retry_s": 0}]',
                            type=list[GemToolConfig])
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"tool_id": "T1", "comm_retry": 1}', type=GemToolConfig)
    GemToolConfig(tool_id="T1").validate()


def test_dsper_and_clock_follow_e5() -> None:
    assert m.dsper(1.0) == "000001"
    assert m.dsper(0.25) == "00000025"
    assert m.dsper(3723.5) == "01020350"
    assert len(m.clock_text()) == 16


def test_s6f11_reader_accepts_what_tools_send_and_rejects_wrong_shapes() -> None:
    body = decode(encode(L(U4(1), U4(3001), L(L(U4(3001), L(A("L1"), A("R1")))))))
    assert m.read_s6f11(body) == (1, 3001, [(3001, L(A("L1"), A("R1")))])
    with pytest.raises(GemProtocolError):
        m.read_s6f11(L(U4(1), U4(3001)))
    with pytest.raises(GemProtocolError):
        m.read_s6f11(A("not a list"))
    assert m.read_s5f1(L(B(b"\x82"), U4(5001), A("pressure"))) == (True, 5001, "pressure")
    assert m.read_s5f1(L(B(b"\x02"), U1(7), A(""))) == (False, 7, "")


def test_recipe_report_is_the_sha256_of_the_body() -> None:
    body = b"step1 rf=300W\n" * 100
    report = recipe_report("T1", "ETCH-A", body)
    assert report.checksum == hashlib.sha256(body).hexdigest()
    assert report.size_bytes == len(body)


def test_a_registered_profile_can_be_named_in_the_tool_config() -> None:
    from equipment.gem import PROFILES, register_profile

    profile = msgspec.structs.replace(FABD_SIM, name="fabd-sim-b")
    register_profile(profile)
    try:
        GemToolConfig(tool_id="T2", profile="fabd-sim-b").validate()
        assert get_profile("fabd-sim-b") is profile
    finally:
        PROFILES.pop("fabd-sim-b")


def test_tool_config_decodes_from_toml_and_bad_timers_name_their_key() -> None:
    text = b"""
tool_id = "ETCH01"
profile = "fabd-sim"
trace_period_s = 1.0
[hsms]
host = "10.1.2.3"
port = 5000
t3_reply_timeout_s = 30.0
"""
    cfg = msgspec.toml.decode(text, type=GemToolConfig)
    cfg.validate()
    assert (cfg.hsms.host, cfg.hsms.port, cfg.hsms.t3_reply_timeout_s) == ("10.1.2.3", 5000, 30.0)
    with pytest.raises(msgspec.ValidationError, match=r"t3_reply_timeout_s.*\$\.hsms"):
        msgspec.toml.decode(text.replace(b"30.0", b"500.0"), type=GemToolConfig)
