"""Review of log lines as journald and a plain log file receive them."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ("import logging; from daemon import log; log.setup('INFO'); "
           "logging.getLogger('fabd.hsms').warning('tool %s not selected', 'ETCH01')")


def _log_line(tmp_path: Path, journal_stream) -> str:
    path = tmp_path / "fabd.log"
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream(st)
        subprocess.run([sys.executable, "-c", SNIPPET], stderr=f, env=env, cwd=ROOT,
                       check=True, timeout=60)
    return path.read_text().strip()


def test_stderr_to_a_file_keeps_timestamps_when_stdout_is_the_journal(tmp_path):
    # StandardOutput=journal with StandardError=append:/var/log/fabd.log: systemd sets
    # JOURNAL_STREAM (for stdout), and the file got "<4>fabd.hsms: ..." with no time at all.
    line = _log_line(tmp_path, lambda st: f"{st.st_dev}:{st.st_ino + 1}")
    assert not line.startswith("<4>"), line
    assert line.endswith("WARNING fabd.hsms: tool ETCH01 not selected"), line
    assert line[:4].isdigit(), line  # the timestamp


def test_stderr_that_is_the_journal_gets_the_priority_prefix(tmp_path):
    line = _log_line(tmp_path, lambda st: f"{st.st_dev}:{st.st_ino}")
    assert line == "<4>fabd.hsms: tool ETCH01 not selected"


def test_a_refused_config_is_at_error_priority_in_the_journal(tmp_path):
    # fabd run printed the refused keys without a priority prefix, so journald filed them at
    # info: `journalctl -u fabd -p err` showed nothing about why fabd would not start.
    config = tmp_path / "fabd.toml"
    config.write_text("[service]\nstop_flush_budget_s = -1\n[htttp]\n")
    path = tmp_path / "stderr"
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        rc = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
                            stderr=f, env=env, cwd=ROOT, timeout=60).returncode
    lines = path.read_text().splitlines()
    assert rc == 2
    assert f"<3>{config}: htttp: unknown key" in "\n".join(lines), lines
    assert len(lines) == 2 and all(line.startswith("<3>") for line in lines), lines
