"""Dispatch policy config: validation with key paths, per-group overrides, reload keeps the old policy."""

from __future__ import annotations

import pytest

from dispatch.config import RULES, Policy, compile_policy, load_policy
from dispatch.errors import PolicyError
from dispatch.scorer import Dispatcher
from dispatch.smt2020 import DEFAULT_DATASET
from tests.dispatch.fabs import line


def problems(source) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as exc:
        load_policy(source)
    return exc.value.problems


def test_errors_name_the_key_path():
    assert problems({"preset": "lifo"})[0][0] == "preset"
    assert problems({"rules": {"cr": {"level": 12}}})[0][0] == "rules.cr.level"
    assert problems({"groups": {"Litho": {"batch_fill": 1.5}}})[0][0] == "groups.Litho.batch_fill"
    assert problems({"groups": {"Litho": {"lookahead_min": "soon"}}})[0][0] == "groups.Litho.lookahead_min"
    assert problems({"rules": {"hotness": {"level": 0}}})[0][0] == "rules"
    assert problems({"max_list": 0})[0][0] == "max_list"
    many = problems({"qt_gate_factor": 0.0, "rules": {"fifo": {"weight": float("nan")}}})
    assert {p for p, _ in many} == {"qt_gate_factor", "rules.fifo.weight"}


def test_toml_file_with_group_overrides(tmp_path):
    path = tmp_path / "fabd.toml"
    path.write_text("""
[dispatch]
preset = "fabd"
max_list = 4
[dispatch.rules]
setup = { level = 1, weight = 3.0 }
[dispatch.groups.N1]
preset = "cr"
lookahead_min = 15.0
""")
    policy = load_policy(path)
    m = line()
    pa = compile_policy(policy, m)
    g, n1 = m.group_index["G"], m.group_index["N1"]
    assert pa.level[g, 4] == 1 and pa.weight[g, 4] == 3.0       # fab-wide override
    assert pa.level[n1, 4] == 2 and pa.level[n1, 5] == 4        # cr preset: setup L2, cr L4
    assert pa.lookahead_min[n1] == 15.0 and pa.lookahead_min[g] == 5.0


def test_bad_toml_reports_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[dispatch\n")
    with pytest.raises(PolicyError, match=r"bad\.toml"):
        load_policy(path)


def test_unknown_tool_group_is_an_error_at_compile():
    with pytest.raises(PolicyError) as exc:
        compile_policy(load_policy({"groups": {"Nope": {}}}), line())
    assert exc.value.problems[0][0] == "groups.Nope"


def test_reload_keeps_the_old_policy_when_the_new_one_is_invalid():
    m = line()
    m.add_lot("old", "PA", arrival_min=-60.0, due_min=90000.0)
    m.add_lot("urgent", "PA", arrival_min=0.0, due_min=100.0)
    d = Dispatcher(m)
    assert d.reload({"preset": "fifo"}) == []
    d.score(0.0)
    assert d.top("G1") == "old"
    assert d.reload({"preset": "cr", "groups": {"Nope": {}}})[0][0] == "groups.Nope"
    assert d.reload({"preset": "cr", "max_list": -1})[0][0] == "max_list"
    d.score(0.0)
    assert d.policy.preset == "fifo" and d.top("G1") == "old"
    assert d.reload({"preset": "cr"}) == []
    d.score(0.0)
    assert d.top("G1") == "urgent"


def test_the_shipped_example_policy_is_valid_for_smt2020():
    from pathlib import Path

    from dispatch import smt2020
    from dispatch.model import from_smt2020

    example = Path(__file__).resolve().parents[2] / "dispatch" / "policy.example.toml"
    policy = load_policy(example)
    assert policy.preset == "fabd" and "Implant_128" in policy.groups
    hvlm = DEFAULT_DATASET
    pa = compile_policy(policy, from_smt2020(smt2020.load(hvlm)))
    assert pa.level.shape == (106, len(RULES))


def test_the_shipped_example_policy_spells_out_the_fabd_preset():
    """A fab engineer edits the example in place: outside its one group override it must
    rank exactly as `preset = "fabd"` does, or copying it silently changes the policy."""
    from pathlib import Path

    from dispatch import smt2020
    from dispatch.model import from_smt2020

    example = load_policy(Path(__file__).resolve().parents[2] / "dispatch" / "policy.example.toml")
    m = from_smt2020(smt2020.load(DEFAULT_DATASET))
    got, want = compile_policy(example, m), compile_policy(Policy(preset="fabd"), m)
    g = m.group_index["DE_BE_11"]
    assert got.level[g].tolist() == want.level[g].tolist()
    on = want.level[g] >= 0
    assert got.weight[g][on].tolist() == want.weight[g][on].tolist()
    for name in got._fields[2:]:
        assert getattr(got, name)[g] == getattr(want, name)[g], name
    assert got.level[m.group_index["Implant_128"]].tolist() != want.level[g].tolist()


def test_smt2020_rules_become_a_policy():

    from dispatch import smt2020
    from dispatch.config import RULES, smt2020_policy
    from dispatch.model import from_smt2020

    ds = smt2020.load(DEFAULT_DATASET)
    pa = compile_policy(smt2020_policy(ds), from_smt2020(ds))
    m = from_smt2020(ds)
    level = {g: dict(zip(RULES, pa.level[m.group_index[g]].tolist(), strict=True))
             for g in ("DE_BE_11", "Implant_128")}
    # rule_HotLotFIRST; rank_HP;rank_RSETUP;rank_FIFO
    assert [level["DE_BE_11"][r] for r in ("hot", "priority", "setup", "fifo")] == [0, 1, 2, 3]
    # rule_LSSU with the Implant_Gas setup group: minimum run, least setup, hot, HP, FIFO
    assert [level["Implant_128"][r] for r in ("minrun", "setup", "hot", "priority", "fifo")] == [
        0, 1, 2, 3, 4]
    assert level["DE_BE_11"]["cr"] == -1


def test_a_group_override_waits_for_its_group_to_appear():
    from dispatch.model import StepSpec

    m = line()
    m.add_lot("old", "PA", arrival_min=-60.0, due_min=90000.0)
    d = Dispatcher(m, load_policy({"groups": {"Later": {"preset": "cr"}}}))
    d.score(0.0)                       # no such group yet: scored with the fab-wide policy
    assert d.top("G1") == "old"
    m.add_route("C", [StepSpec(group="Later", recipe="c-1")])
    m.add_tool("L1", "Later")
    d.score(0.0)
    assert int(d._pol.level[m.group_index["Later"], 5]) == 4    # cr at level 4 now applies
