"""The reconnect rule the OPC UA and MQTT sessions share (equipment.reconnect.Outages)."""

from __future__ import annotations

import random

from equipment.reconnect import Outages


def test_a_quick_loss_is_the_same_outage_and_a_stable_ones_loss_a_new_one() -> None:
    now = [0.0]
    outages = Outages(1.0, 8.0, random.Random(1), clock=lambda: now[0])
    assert outages.failed()  # the outage's WARNING
    assert not outages.failed()
    delays = [outages.delay_s() for _ in range(2)]
    assert outages.up()  # "back", once
    now[0] += 1.0
    assert not outages.lost()  # dropped at once: nothing more said ...
    delays.append(outages.delay_s())
    assert not outages.up()
    # ... and the backoff goes on growing (jitter is 0.5..1 of 1, 2, 4 s)
    assert delays[0] <= 1.0 and 2.0 <= delays[2] <= 4.0
    now[0] += 16.0  # up for 2 x the cap: its loss is a new outage
    assert outages.lost()
    assert outages.delay_s() <= 1.0 and outages.failures == 0
    assert outages.up()


def test_a_refusal_is_said_once_per_outage_even_after_the_warning() -> None:
    outages = Outages(1.0, 8.0, random.Random(1))
    assert outages.failed()
    assert outages.failed(refused=True)  # the ERROR, though the WARNING is out
    assert not outages.failed(refused=True)
    assert not outages.failed()
