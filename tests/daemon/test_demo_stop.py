"""`fabd demo` stopped by SIGTERM while it sets up leaves no redis-server or mosquitto behind."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _procs_under(path: Path) -> list[int]:
    """Pids of processes whose command line names `path` (the demo's private servers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline:
            pids.append(int(entry))
    return pids


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_sigterm_during_set_up_stops_the_private_redis(tmp_path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's temp dir, and its servers' dirs
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "demo", "--duration", "120", "--no-view",
         "--metrics", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    port = None
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            if not sel.select(1):   # a quiet second (a loaded machine): wait on, to the deadline
                continue
            line = proc.stderr.readline().decode()
            if not line:
                break
            if "started a local redis-server on port" in line:
                port = int(line.rsplit(" ", 1)[1])
        assert port is not None, "the demo never said it started redis-server"
        proc.send_signal(signal.SIGTERM)  # the tools are still starting: fabd is not up yet
        proc.wait(60)
        assert not _listening(port), f"redis-server on port {port} outlived the demo"
        assert _procs_under(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in _procs_under(tmp_path):  # what the demo left behind, only its own
            os.kill(pid, signal.SIGKILL)
