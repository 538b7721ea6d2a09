"""The reconnect rule the HSMS, OPC UA and MQTT sessions share: backoff, what is said when.

STYLE: one WARNING when a peer goes away, one INFO when it is back, and one
ERROR per outage when the peer refuses us (that will not end by itself). A
connection lost sooner than 2 x the backoff cap after it came up (HSMS: 60 s,
its cap is minutes) is the same outage (a broker that kicks us at once because
another client took our client id, an OPC UA server that closes the secure
channel as soon as the session is up, a tool that drops the host right after
the select): the backoff goes on growing and nothing more is said, instead of a
reconnect and a WARNING and an INFO as fast as the peer answers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


def backoff_s(attempt: int, floor_s: float, cap_s: float, rng: random.Random, *,
              floor_is_minimum: bool = False) -> float:
    """Return the jittered exponential delay before reconnect attempt `attempt` (0-based).

    The jitter takes up to half off the doubled delay; with `floor_is_minimum` it never
    goes below the floor (HSMS: E37's T5 is the least time between connect attempts).
    """
    ceiling = min(cap_s, floor_s * 2 ** min(attempt, 30))
    if floor_is_minimum:
        return rng.uniform(floor_s, max(floor_s, ceiling))
    return ceiling * rng.uniform(0.5, 1.0)


class Outages:
    """One peer's outages: how long to wait before the next attempt, and when to speak."""

    def __init__(self, floor_s: float, cap_s: float, rng: random.Random, *,
                 clock: Callable[[], float] = time.monotonic, stable_s: float | None = None,
                 floor_is_minimum: bool = False) -> None:
        self._floor_s = floor_s
        self._cap_s = cap_s
        # up at least this long: its loss is a new outage (default 2 x the cap)
        self._stable_s = 2 * cap_s if stable_s is None else stable_s
        self._floor_is_minimum = floor_is_minimum
        self._rng = rng
        self._clock = clock
        self._attempt = 0  # backoff exponent in this outage
        self.failures = 0  # failed attempts in this outage
        self._warned = False  # the outage's WARNING is out
        self._refused = False  # the outage's ERROR (peer refuses us) is out
        self._back_said = False  # the outage's INFO "back" is out
        self._up_at: float | None = None

    def up(self) -> bool:
        """Note the connection up; True once per reported outage: say it is back."""
        self._up_at = self._clock()
        self._refused = False
        if self._warned and not self._back_said:
            self._back_said = True
            return True
        return False

    def lost(self) -> bool:
        """Note the connection lost; True when this starts an outage: say it (WARNING)."""
        if self._up_at is not None and self._clock() - self._up_at >= self._stable_s:
            self._attempt = self.failures = 0
            self._warned = self._back_said = False
        self._up_at = None
        return self._down()

    def failed(self, *, refused: bool = False) -> bool:
        """Note a failed attempt; True when it is to be said (WARNING, or ERROR if refused).

        A refusal is said once per outage even when the outage was already reported:
        someone has to fix the credentials or the certificates.
        """
        self.failures += 1
        if refused:
            say = not self._refused
            self._refused = self._warned = True
            return say
        return self._down()

    def delay_s(self) -> float:
        """Return how long to wait before the next attempt (grows until the peer stays up)."""
        delay = backoff_s(self._attempt, self._floor_s, self._cap_s, self._rng,
                          floor_is_minimum=self._floor_is_minimum)
        self._attempt += 1
        return delay

    def _down(self) -> bool:
        say = not self._warned
        self._warned = True
        return say
