"""`fabd consume --check-wip` joining a stream late, and meeting entries of a newer schema.

Real redis-server; the entries are written the way fabd's relay writes them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import redis as redis_sync

from daemon import events as ev


def add(r, stream: str, seq: int, eid: str, etype: str, data: dict, v: int = 1) -> None:
    r.xadd(stream, {"type": etype, "v": v, "seq": seq, "eid": eid, "ts": "2026-01-01T00:00:00Z",
                    "data": json.dumps(data)})


def add_id(r, stream: str, seq: int, eid: str, etype: str, data: dict) -> bytes:
    """As add(), returning the entry id."""
    return r.xadd(stream, {"type": etype, "v": 1, "seq": seq, "eid": eid,
                           "ts": "2026-01-01T00:00:00Z", "data": json.dumps(data)})


def snapshot(lots_seq: int, counts: list[tuple[str, int, int]]) -> dict:
    return {"lots_seq": lots_seq, "total_lots": sum(c[1] for c in counts),
            "total_wafers": sum(c[2] for c in counts),
            "counts": [{"product_id": "P", "step_id": s, "lots": n, "wafers": w}
                       for s, n, w in counts]}


def lot(lot_id: str, step: str, **more) -> dict:
    return {"lot_id": lot_id, "product_id": "P", "step_id": step, "wafers": 25, **more}


def moved(lot_id: str, frm: str, to: str) -> dict:
    return lot(lot_id, to, from_step_id=frm, route_id="R")


def consume(url: str) -> tuple[int, list[dict], str]:
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "consume", "--stream", "fab:lots", "--redis-url",
         url, "--check-wip", "--json", "--idle-exit", "0.3"],
        capture_output=True, text=True, timeout=60)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return out.returncode, rows, out.stderr


def test_late_start_after_an_empty_snapshot_syncs_instead_of_crying_mismatch(redis_url) -> None:
    # A fabd that idled before the first lot published a snapshot at lots seq 0; the first
    # lots entries were trimmed (MAXLEN) by the time the ERP connector was installed.
    r = redis_sync.Redis.from_url(redis_url)
    add(r, "fab:wip", 1, "i-1", "wip_snapshot", snapshot(0, []))
    add(r, "fab:lots", 1, "i-2", "lot_created", lot("L1", "S1"))
    add(r, "fab:lots", 2, "i-3", "lot_created", lot("L2", "S1"))
    add(r, "fab:lots", 3, "i-4", "lot_moved", moved("L1", "S1", "S2"))
    add(r, "fab:lots", 4, "i-5", "lot_moved", moved("L2", "S1", "S2"))
    add(r, "fab:wip", 2, "i-6", "wip_snapshot", snapshot(4, [("S2", 2, 50)]))
    add(r, "fab:lots", 5, "i-7", "lot_moved", moved("L1", "S2", "S3"))
    add(r, "fab:wip", 3, "i-8", "wip_snapshot", snapshot(5, [("S2", 1, 25), ("S3", 1, 25)]))
    r.xtrim("fab:lots", maxlen=3, approximate=False)  # seq 1 and 2 are gone
    r.close()
    rc, rows, err = consume(redis_url)
    kinds = [row["kind"] for row in rows]
    assert "wip_mismatch" not in kinds, rows
    assert kinds.count("late_start") == 1
    # the empty snapshot does not line up with entry 3: the one at seq 4 is the baseline,
    # the one at 5 is checked against it
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"][-1:] == [4]
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [5]
    assert rc == 0, err


def test_a_snapshot_just_before_the_first_entry_read_is_the_baseline(redis_url) -> None:
    # Entries 1..2 trimmed; the snapshot at seq 2 covers exactly what the consumer missed.
    r = redis_sync.Redis.from_url(redis_url)
    add(r, "fab:lots", 1, "i-1", "lot_created", lot("L1", "S1"))
    add(r, "fab:lots", 2, "i-2", "lot_created", lot("L2", "S1"))
    add(r, "fab:wip", 1, "i-3", "wip_snapshot", snapshot(2, [("S1", 2, 50)]))
    add(r, "fab:lots", 3, "i-4", "lot_moved", moved("L1", "S1", "S2"))
    add(r, "fab:wip", 2, "i-5", "wip_snapshot", snapshot(3, [("S1", 1, 25), ("S2", 1, 25)]))
    r.xtrim("fab:lots", maxlen=1, approximate=False)
    r.close()
    rc, rows, err = consume(redis_url)
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"] == [2], rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [3], rows
    assert rc == 0, err


def test_entries_of_a_newer_schema_version_are_skipped_with_a_warning(redis_url) -> None:
    r = redis_sync.Redis.from_url(redis_url)
    newer = ev.SCHEMA_VERSION + 1
    add(r, "fab:lots", 1, "i-1", "lot_created", lot("L1", "S1"))
    # a newer daemon renamed a field: this consumer cannot apply the entry
    add(r, "fab:lots", 2, "i-2", "lot_moved", {"lot_id": "L1", "product_id": "P", "to": "S2",
                                               "from": "S1", "wafers": 25}, v=newer)
    add(r, "fab:wip", 1, "i-3", "wip_snapshot", {"lots_seq": 2, "wip": []}, v=newer)
    add(r, "fab:lots", 3, "i-4", "lot_created", lot("L2", "S1"))
    add(r, "fab:wip", 2, "i-5", "wip_snapshot", snapshot(3, [("S1", 1, 25), ("S2", 1, 25)]))
    add(r, "fab:lots", 4, "i-6", "lot_moved", moved("L2", "S1", "S2"))
    add(r, "fab:wip", 3, "i-7", "wip_snapshot", snapshot(4, [("S2", 2, 50)]))
    r.close()
    rc, rows, err = consume(redis_url)
    assert "Traceback" not in err, err
    kinds = [row["kind"] for row in rows]
    assert kinds.count("unsupported_version") == 2, rows
    # the skipped entry may have moved WIP: the consumer resyncs at the next snapshot
    assert "wip_mismatch" not in kinds, rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"] == [3]
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [4]
    assert rows[-1]["kind"] == "summary" and rows[-1]["gaps"] == 0
    assert rc == 0, err


def test_a_malformed_entry_is_reported_and_skipped_not_a_crash_loop(redis_url) -> None:
    # Not JSON, a move without from_step_id, no seq at all: each is named, skipped, and the
    # consumer goes on (before, the first one crashed it, and again on every restart).
    r = redis_sync.Redis.from_url(redis_url)
    add(r, "fab:lots", 1, "i-1", "lot_created", lot("L1", "S1"))
    r.xadd("fab:lots", {"type": "lot_created", "v": 1, "seq": 2, "eid": "i-2", "ts": "x",
                        "data": "{not json"})
    r.xadd("fab:lots", {"type": "lot_created", "v": 1, "eid": "i-4", "data": "{}"})   # no seq
    add(r, "fab:lots", 3, "i-3", "lot_moved", lot("L1", "S2"))        # no from_step_id
    add(r, "fab:wip", 1, "i-5", "wip_snapshot", snapshot(3, [("S2", 1, 25)]))
    add(r, "fab:lots", 4, "i-6", "lot_created", lot("L2", "S1"))
    add(r, "fab:wip", 2, "i-7", "wip_snapshot", snapshot(4, [("S1", 1, 25), ("S2", 1, 25)]))
    r.close()
    rc, rows, err = consume(redis_url)
    assert "Traceback" not in err, err
    bad = [row for row in rows if row["kind"] == "malformed"]
    assert len(bad) == 3, rows
    assert "seq 2" in bad[0]["text"] and "'seq'" in bad[1]["text"]
    assert "from_step_id" in bad[2]["text"]
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"] == [3], rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [4], rows
    assert rows[-1]["malformed"] == 3
    assert rc == 1   # a stream that breaks the contract is not a clean run


def test_pending_entries_trimmed_before_a_restart_are_not_counted_as_malformed(redis_url) -> None:
    # The consumer read entries 1 and 2 and died before its XACK; MAXLEN trimmed them
    # meanwhile. On the restart Redis hands them back with no fields: they were not
    # malformed (fabd wrote them whole), they are gone; the consumer starts late.
    r = redis_sync.Redis.from_url(redis_url)
    ids = [add_id(r, "fab:lots", 1, "i-1", "lot_created", lot("L1", "S1")),
           add_id(r, "fab:lots", 2, "i-2", "lot_created", lot("L2", "S1"))]
    add(r, "fab:wip", 1, "i-3", "wip_snapshot", snapshot(2, [("S1", 2, 50)]))
    add(r, "fab:lots", 3, "i-4", "lot_moved", moved("L1", "S1", "S2"))
    add(r, "fab:wip", 2, "i-5", "wip_snapshot", snapshot(3, [("S1", 1, 25), ("S2", 1, 25)]))
    r.xgroup_create("fab:lots", "erp-reference", id="0")
    r.xreadgroup("erp-reference", "consume-1", {"fab:lots": ">"}, count=2)  # then "crash"
    r.xdel("fab:lots", *ids)
    r.close()
    rc, rows, err = consume(redis_url)
    assert "Traceback" not in err, err
    kinds = [row["kind"] for row in rows]
    assert "malformed" not in kinds, rows
    assert kinds.count("late_start") == 1, rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"] == [2], rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [3], rows
    assert rows[-1]["malformed"] == 0 and rows[-1]["gaps"] == 0
    assert rc == 0, err


def test_an_entry_with_a_version_that_is_not_a_number_is_malformed_not_a_crash(redis_url) -> None:
    r = redis_sync.Redis.from_url(redis_url)
    add(r, "fab:lots", 1, "i-1", "lot_created", lot("L1", "S1"))
    r.xadd("fab:lots", {"type": "lot_created", "v": "one", "seq": 2, "eid": "i-2",
                        "ts": "2026-01-01T00:00:00Z", "data": json.dumps(lot("L2", "S1"))})
    add(r, "fab:wip", 1, "i-3", "wip_snapshot", snapshot(2, [("S1", 2, 50)]))
    add(r, "fab:lots", 3, "i-4", "lot_moved", moved("L1", "S1", "S2"))
    add(r, "fab:wip", 2, "i-5", "wip_snapshot", snapshot(3, [("S1", 1, 25), ("S2", 1, 25)]))
    r.close()
    rc, rows, err = consume(redis_url)
    assert "Traceback" not in err, err
    bad = [row for row in rows if row["kind"] == "malformed"]
    assert len(bad) == 1 and "seq 2" in bad[0]["text"], rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_baseline"] == [2], rows
    assert [row["lots_seq"] for row in rows if row["kind"] == "wip_ok"] == [3], rows
    assert rows[-1]["malformed"] == 1
    assert rc == 1


def test_a_redis_outage_is_reported_and_reading_goes_on_after_it(persistent_redis) -> None:
    # `fabd consume` is the reference an ERP integrator copies: it used to die with a
    # traceback when Redis went away (a restart, a failover).
    import time

    url = persistent_redis.url
    r = redis_sync.Redis.from_url(url)
    for i in range(1, 4):
        add(r, "fab:lots", i, f"i-{i}", "lot_created", lot(f"L{i}", "S1"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "consume", "--stream", "fab:lots", "--redis-url",
         url, "--json", "--idle-exit", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        def read_all() -> bool:
            groups = r.xinfo_groups("fab:lots")
            return bool(groups) and groups[0]["pending"] == 0 and groups[0]["entries-read"] == 3

        deadline = time.monotonic() + 30
        while not read_all():
            assert time.monotonic() < deadline, "the first entries were not read"
            time.sleep(0.1)
        r.close()
        persistent_redis.stop()
        time.sleep(1.5)
        persistent_redis.start()
        r = redis_sync.Redis.from_url(url)
        for i in range(4, 7):
            add(r, "fab:lots", i, f"i-{i}", "lot_created", lot(f"L{i}", "S1"))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        r.close()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    kinds = [row["kind"] for row in rows]
    assert "Traceback" not in err
    assert kinds.count("redis_down") == 1 and kinds.count("redis_up") == 1
    assert kinds.index("redis_down") < kinds.index("redis_up")
    summary = rows[-1]
    assert (summary["applied"], summary["gaps"], summary["malformed"]) == (6, 0, 0)
    assert proc.returncode == 0
