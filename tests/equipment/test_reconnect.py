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


def test_hsms_backoff_never_waits_less_than_t5_and_grows_while_the_tool_flaps() -> None:
    """E37: T5 is the least time between connect attempts, jitter or not."""
    now = [0.0]
    outages = Outages(10.0, 120.0, random.Random(3), clock=lambda: now[0], stable_s=60.0,
                      floor_is_minimum=True)
    assert outages.failed()
    delays = [outages.delay_s() for _ in range(6)]
    assert all(d >= 10.0 for d in delays) and max(delays) <= 120.0
    assert delays[0] == 10.0 and max(delays[3:]) > 20.0  # ceilings 10, 20, 40, 80, 120, 120
    assert outages.up()
    now[0] += 30.0
    assert not outages.lost()  # dropped within a minute of the select: the same outage
    assert outages.delay_s() >= 10.0
    assert not outages.up()
    now[0] += 60.0
    assert outages.lost()  # up a minute: a new outage, said, and T5 again
    assert outages.delay_s() == 10.0
