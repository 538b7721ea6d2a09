"""The SPC section of the daemon's TOML config: defaults, overrides, errors with their key."""

from __future__ import annotations

import msgspec
import pytest

from spc.config import ChartType, Reaction, RuleSet, SpcConfig

EXAMPLE = """
history_points = 16

[default]
rules = "nelson"
phase_i_points = 30
reaction = "notify"
k = { k2_points = 8 }

[[overrides]]
pattern = "ETCH*/*/*/rf_power"
spec = { chart_type = "ewma", ewma_lambda = 0.1, reaction = "inhibit_chamber" }

[[overrides]]
pattern = "CMP*/*/*/thickness"
spec = { chart_type = "xbar_r", subgroup_size = 5, rules = "we", reaction = "hold_lot" }
"""


def test_an_example_config_decodes_and_picks_specs_by_key():
    cfg = msgspec.toml.decode(EXAMPLE, type=SpcConfig)
    assert cfg.default.k.k2_points == 8 and cfg.default.k.k3_points == 6
    etch = cfg.spec_for("ETCH01/PM1/STEP3/rf_power")
    assert (etch.chart_type, etch.reaction, etch.enabled_tests()) == (
        ChartType.EWMA, Reaction.INHIBIT_CHAMBER, (1,))
    cmp_ = cfg.spec_for("CMP02/-/STEP9/thickness")
    assert (cmp_.rules, cmp_.enabled_tests(), cmp_.params().k2_points) == (
        RuleSet.WESTERN_ELECTRIC, (1, 2, 5, 6), 8)
    assert cfg.spec_for("LITHO01/-/-/dose").phase_i_points == 30


@pytest.mark.parametrize(("toml", "where"), [
    ('[default]\nreaction = "scrap_wafer"', "$.default.reaction"),
    ("[default]\nsubgroup_size = 30", "$.default"),
    ("[default]\ntests = [1, 9]", "$.default"),
    ("[default.k]\nk7_points = 100", "$.default.k"),
    ("[[overrides]]\npattern = 'X*'\nspec = { ewma_lambda = 0.0 }", "$.overrides[0].spec"),
])
def test_a_bad_value_is_reported_with_its_key_path(toml, where):
    with pytest.raises(msgspec.ValidationError) as exc:
        msgspec.toml.decode(toml, type=SpcConfig)
    assert where in str(exc.value)


def test_per_test_reactions_from_toml():
    cfg = msgspec.toml.decode('[default]\nreaction = "notify"\n'
                              'test_reactions = { 1 = "hold_lot", 5 = "inhibit_tool" }',
                              type=SpcConfig)
    assert cfg.default.test_reactions == {1: Reaction.HOLD_LOT, 5: Reaction.INHIBIT_TOOL}
    with pytest.raises(msgspec.ValidationError, match="test_reactions"):
        msgspec.toml.decode("[default]\ntest_reactions = { 9 = 'notify' }", type=SpcConfig)
