"""The Grafana dashboard only uses metrics the daemon exports."""

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import daemon.core  # noqa: F401 - registers the fab metrics
import equipment.metrics  # noqa: F401

DASHBOARD = Path(__file__).resolve().parents[2] / "systemd" / "grafana-dashboard.json"


def test_every_dashboard_metric_is_exported():
    exported = set()
    for metric in REGISTRY.collect():
        exported.add(metric.name)
        for sample in metric.samples:
            exported.add(sample.name)
    names = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            names.update(re.findall(r"\b(fabd_[a-z0-9_]+)", target["expr"]))
    missing = {n for n in names if n not in exported
               and n.removesuffix("_bucket") not in exported
               and n.removesuffix("_total") not in exported}
    assert not missing, f"dashboard uses metrics nobody exports: {sorted(missing)}"
