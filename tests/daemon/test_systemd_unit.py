"""The unit file: verifies cleanly and is hardened (exposure at or below 1.5)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "fabd.service"

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed")


@needs_systemd
def test_unit_verifies_cleanly(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's fabd.
    fabd = Path(sys.executable).parent / "fabd"
    unit = tmp_path / "fabd.service"
    unit.write_text(UNIT.read_text().replace("/opt/fabd/.venv/bin/fabd", str(fabd)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


@needs_systemd
def test_unit_exposure_is_at_most_1_5(tmp_path):
    unit = tmp_path / "fabd.service"
    unit.write_text(UNIT.read_text())
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                         capture_output=True, text=True)
    m = re.search(r"Overall exposure level for fabd.service: ([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 1.5


def test_unit_is_notify_with_watchdog_and_no_mdwe():
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "User=fabd", "StateDirectory=fabd",
                 "CacheDirectory=fabd", "NUMBA_CACHE_DIR=/var/cache/fabd/numba"):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    # numba JIT needs W+X memory.
    assert not re.search(r"^MemoryDenyWriteExecute=yes", text, re.M)


def test_a_config_error_stops_the_unit_for_good():
    # RestartPreventExitStatus= is matched against the *main* process's exit status only
    # (systemd's service_shall_restart looks at main_exec_status). A config check in an
    # ExecStartPre= that exits 2 fails the start with result exit-code, Restart=on-failure
    # restarts it, and a bad config loops every RestartSec=. `fabd run` checks the config
    # itself and exits 2 (test_config), which is what the prevent rule sees.
    text = UNIT.read_text()
    assert re.search(r"^RestartPreventExitStatus=.*\b2\b", text, re.M)
    assert re.search(r"^ExecStart=\S*fabd run --config ", text, re.M)
    # an ExecStartPre= whose failure counts (no "-" among its prefixes @-:+!)
    failing_pre = [m.group(0) for m in re.finditer(r"^ExecStartPre=([-@:+!]*)\S.*$", text, re.M)
                   if "-" not in m.group(1)]
    assert not failing_pre, f"restarted in a loop on a bad config: {failing_pre}"
