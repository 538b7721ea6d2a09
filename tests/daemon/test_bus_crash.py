"""A producer SIGKILLed mid-stream and restarted: nothing lost, duplicates only with the same eid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon.store import read_journal
from tests.daemon.bus_support import read_stream

N_LOTS = 150
ROOT = Path(__file__).resolve().parents[2]


def start(url: str, state_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.bus_support.producer", url, str(state_dir),
         str(N_LOTS)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_sigkill_mid_stream_loses_nothing(redis_url, tmp_path) -> None:
    child = start(redis_url, tmp_path)
    killed_at = 0
    for line in child.stdout:  # kill once it is well under way (a third of the work)
        if line.startswith("progress") and int(line.split()[1]) >= N_LOTS * 13 // 3:
            killed_at = int(line.split()[1])
            child.send_signal(signal.SIGKILL)
            break
    child.wait(30)
    assert child.returncode == -signal.SIGKILL and killed_at > 0
    published_before = len(read_stream(redis_url, "fab:lots"))
    assert published_before > 0

    child = start(redis_url, tmp_path)  # restart on the same store: it finishes the work
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out[-2000:]
    done = json.loads(out.splitlines()[-1].removeprefix("done "))

    events = read_journal(tmp_path / "fabd.sqlite3")
    journal = {stream: [r[4] for r in events if r[1] == stream] for stream in ("lots", "quality")}
    for stream in ("lots", "quality"):
        entries = read_stream(redis_url, f"fab:{stream}")
        first: dict[str, dict] = {}
        for e in entries:
            if e["eid"] in first:  # a re-send: allowed, but identical
                assert (first[e["eid"]]["seq"], first[e["eid"]]["data"]) == (e["seq"], e["data"])
            else:
                first[e["eid"]] = e
        unique = list(first.values())
        assert [e["seq"] for e in unique] == list(range(1, done["seq"][stream] + 1))
        assert [e["eid"] for e in unique] == journal[stream]  # exactly the journal, in order
    lots = [e for e in read_stream(redis_url, "fab:lots")]
    completed = {e["data"]["lot_id"] for e in lots if e["type"] == "lot_completed"}
    assert completed == {f"L{i:04d}" for i in range(N_LOTS)}
