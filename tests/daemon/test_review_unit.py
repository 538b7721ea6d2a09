"""Review of the unit file against what fabd needs at run time."""

import os
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "fabd.service"


def _process_metrics(proc: str) -> list[str]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry, proc=proc)
    return [m.name for m in registry.collect()]


def test_the_unit_keeps_the_process_metrics_on_metrics(tmp_path):
    # ProcSubset=pid leaves only the pid directories in /proc: no /proc/stat, and then
    # prometheus-client's process collector exports nothing, so /metrics under systemd lost
    # process_open_fds / process_max_fds / process_resident_memory_bytes (tools are sockets).
    pid_only = tmp_path / "proc"
    pid_only.mkdir()
    (pid_only / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    (pid_only / "self").symlink_to(f"/proc/{os.getpid()}")
    assert _process_metrics(str(pid_only)) == []
    assert "process_open_fds" in _process_metrics("/proc")
    assert not re.search(r"^ProcSubset=pid", UNIT.read_text(), re.M)
