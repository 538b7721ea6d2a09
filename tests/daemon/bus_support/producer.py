"""A child process for the crash test: runs a Bus and pushes lots through their route via tool events.

    python -m tests.daemon.bus_support.producer REDIS_URL STATE_DIR N_LOTS

Prints `progress <jseq>` after each durable batch and `done <json>` at the end.
It resumes from the store after a SIGKILL: lots that exist are not re-created,
and each lot continues from the step the store says it is at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from daemon.bus import Bus
from daemon.busconfig import StoreConfig
from equipment import events as dom
from tests.daemon.bus_support import configs, define_master_data


async def main(url: str, state_dir: str, n_lots: int) -> None:
    cfg = configs(url)
    cfg["store"] = StoreConfig(commit_interval_ms=2.0, synchronous="FULL")
    bus = Bus(state_dir=Path(state_dir), **cfg)
    await bus.start()
    tasks = [asyncio.create_task(bus.writer_loop(), name="writer"),
             asyncio.create_task(bus.relay_loop(), name="relay")]
    mes = bus.mes
    if "RT-A" not in mes.routes:
        define_master_data(bus)
    tool = {"LITHO": "LITHO01", "ETCH": "ETCH01"}
    while True:
        batch: list = []
        for i in range(n_lots):
            lot_id = f"L{i:04d}"
            if lot_id not in mes.lots:
                if len(batch) < 40:
                    mes.create_lot(lot_id, "PO-1", "P-A", 25)
                    batch.append(None)
                continue
            lot = mes.lots[lot_id]
            if lot.state == "queued" and len(batch) < 40:
                t = tool[mes.step_of(lot).tool_group]
                batch.append(dom.ProcessStarted(tool_id=t, ts=1.0, lot_id=lot_id))
                batch.append(dom.ProcessCompleted(tool_id=t, ts=2.0, lot_id=lot_id,
                                                  parameters={"thk_nm": 100.0 + i % 7}))
        if not batch:
            break
        await bus.sink.submit([e for e in batch if e is not None])
        print(f"progress {mes.jseq}", flush=True)
    assert await bus.drain(30)
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await bus.close()
    print("done " + json.dumps({"seq": mes.seq, "jseq": mes.jseq}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
