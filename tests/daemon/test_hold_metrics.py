"""fabd_lots_held counts holds by a bounded class of reason, never by free text.

A queue-time hold's reason names two steps and the minutes over; an ERP hold's reason is
whatever the ERP sends: as label values they made a new Prometheus series per held lot.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.daemon.bus_support import define_master_data
from tests.daemon.test_dispatch_advisory import running_core


def held_by_class() -> dict[str, float]:
    return {s.labels["reason"]: s.value for m in REGISTRY.collect() if m.name == "fabd_lots_held"
            for s in m.samples}


async def test_holds_are_counted_by_class_of_reason(redis_url, tmp_path) -> None:
    async with running_core(redis_url, tmp_path) as core:
        define_master_data(core.bus)
        mes = core.bus.mes
        for i in range(5):
            mes.create_lot(f"L{i}", "PO", "P-A", 25)
        mes.hold("L0", "queue time to step S1 exceeded by 3.2 min at step S1", "enforcement",
                 "queue_time")
        mes.hold("L1", "queue time to step S1 exceeded by 7.9 min at step S1", "enforcement",
                 "queue_time")
        mes.hold("L2", "spc:LITHO01/-/S0/CD", "spc")
        mes.hold("L3", "customer asked to wait for the mask change", "planner-ann")
        mes.hold("L4", "engineering review of lot L4", "eng-kim")
        core.step_gauges()
    assert held_by_class() == {"queue_time": 2.0, "spc": 1.0, "erp": 2.0}


def scrapped(product: str) -> float:
    return REGISTRY.get_sample_value("fabd_wafers_scrapped_total", {"product": product}) or 0.0


async def test_scrapped_wafers_are_counted_per_product_whole_lots_and_single_wafers(
        redis_url, tmp_path) -> None:
    before = scrapped("P-A")
    async with running_core(redis_url, tmp_path) as core:
        define_master_data(core.bus)
        mes = core.bus.mes
        mes.create_lot("S1", "PO", "P-A", 25)
        mes.create_lot("S2", "PO", "P-A", 20)
        mes.scrap_wafers("S1", 2, "chipped", "op")
        mes.scrap("S2", "dropped", "op")
    assert scrapped("P-A") - before == 22
