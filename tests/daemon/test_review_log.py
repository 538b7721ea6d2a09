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
