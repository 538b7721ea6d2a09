"""Statistical process control: control charts, the numba rule engine, reaction plans.

The daemon uses `SpcEngine` (register charts, add points, `evaluate()` once per
tick) and calls `warm()` before READY; `fabd spc` (spc.cli) is the engineers' tool.
"""

from spc.config import (
    ChartOverride,
    ChartSpec,
    ChartType,
    Reaction,
    RuleParams,
    RuleSet,
    SpcConfig,
)
from spc.engine import LimitChange, SpcEngine, TickResult, Violation, chart_key
from spc.errors import SpcConfigError, SpcError, SpcInputError, UnknownChartError
from spc.kernel import warm
from spc.limits import Limits

__all__ = [
    "ChartOverride",
    "ChartSpec",
    "ChartType",
    "LimitChange",
    "Limits",
    "Reaction",
    "RuleParams",
    "RuleSet",
    "SpcConfig",
    "SpcConfigError",
    "SpcEngine",
    "SpcError",
    "SpcInputError",
    "TickResult",
    "UnknownChartError",
    "Violation",
    "chart_key",
    "warm",
]
