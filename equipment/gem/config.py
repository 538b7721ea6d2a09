"""Per-tool GEM host configuration, for the daemon config to compose (one entry per tool)."""

from __future__ import annotations

import msgspec

from equipment.gem.errors import GemConfigError
from equipment.hsms.config import HsmsConfig


class GemToolConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One GEM tool: its id, how to reach it (HSMS-SS, active), which driver profile it speaks."""

    tool_id: str
    hsms: HsmsConfig = HsmsConfig()  # host, port, device_id, E37 timers (mode must be active)
    profile: str = "fabd-sim"  # a name in equipment.gem.profile.PROFILES
    comm_retry_s: float = 10.0  # E30 CommDelay: wait between S1F13 attempts until COMMACK 0
    trace_period_s: float = 0.0  # S2F23 sample period for the profile's trace ids; 0: no trace
    trace_group_size: int = 1  # REPGSZ: samples per S6F1
    set_clock: bool = True  # send S2F31 with our UTC clock at start-up (skipped if unsupported)
    request_spooled: bool = True  # send S6F23 (transmit) after every start-up
    spool_settle_s: float = 0.5  # after S6F23: quiet time before the status read (E30 order)
    spool_drain_max_s: float = 10.0  # after S6F23: longest wait for that quiet, then read
    inbox_max: int = 1000  # primaries waiting for the ordered worker; beyond: left unacked

    def __post_init__(self) -> None:
        # Decoding fails here, so `fabd check-config` names the key path (msgspec adds it).
        problem = self._problem()
        if problem is not None:
            raise ValueError(problem)

    def _problem(self) -> str | None:
        from equipment.gem.profile import PROFILES  # register site profiles before decoding

        if self.profile not in PROFILES:
            return (f"profile: unknown GEM driver profile {self.profile!r} "
                    f"(known: {', '.join(sorted(PROFILES))})")
        if not self.tool_id:
            return "tool_id: required"
        if self.hsms.mode != "active":
            return 'hsms.mode: the GEM host connects ("active")'
        if not 0 < self.hsms.port < 65536:
            return f"hsms.port: {self.hsms.port} is not a TCP port to connect to"
        if self.comm_retry_s <= 0:
            return "comm_retry_s: must be > 0"
        if self.trace_period_s < 0 or (0 < self.trace_period_s < 0.01):
            return f"trace_period_s: {self.trace_period_s} (0, or at least 0.01)"
        if not 1 <= self.trace_group_size <= 1000:
            return f"trace_group_size: {self.trace_group_size} outside 1-1000"
        if self.spool_settle_s < 0:
            return "spool_settle_s: must be >= 0"
        if self.spool_drain_max_s < self.spool_settle_s:
            return (f"spool_drain_max_s: {self.spool_drain_max_s} is below spool_settle_s "
                    f"({self.spool_settle_s})")
        if self.inbox_max < 1:
            return "inbox_max: must be >= 1"
        return None

    def validate(self, where: str = "tool") -> None:
        """Raise GemConfigError naming the key when a value cannot work."""
        problem = self._problem()
        if problem is not None:
            raise GemConfigError(f"{where}.{problem}")
