"""Reconciliation: a periodic WIP snapshot on `<prefix>:wip` so an ERP can prove its counts.

A snapshot carries lots and wafers per product and step, and `lots_seq`: the
last `<prefix>:lots` entry it covers. It is emitted through the same journal as
every other event, so it is published after every lots entry up to `lots_seq`
and before any later one; a consumer that applied lots entries 1..lots_seq
must hold exactly these counts (see `fabd consume --check-wip`).
"""

from __future__ import annotations

import asyncio
import logging

from daemon.busconfig import BusConfig
from daemon.mes import MesState

log = logging.getLogger(__name__)


class WipSnapshots:
    """Emits a WIP snapshot every `snapshot_interval_s`."""

    def __init__(self, bus: BusConfig, mes: MesState) -> None:
        self.interval_s = bus.snapshot_interval_s
        self.mes = mes
        self.emitted = 0

    def snapshot_now(self) -> None:
        """Emit one snapshot now (also handy at the end of a shift or in a test)."""
        snap = self.mes.wip_snapshot()
        self.emitted += 1
        log.debug("wip snapshot: %d lots, %d wafers, covers lots seq %d", snap.total_lots,
                  snap.total_wafers, snap.lots_seq)

    async def run(self) -> None:
        """Emit snapshots until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.snapshot_now()
