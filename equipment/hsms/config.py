"""HSMS-SS connection settings: E37 timer names with units, validated against the E37 ranges."""

from __future__ import annotations

from typing import Literal

import msgspec

# E37 Table 10: allowed ranges of the timers, seconds
_E37_RANGES_S = {
    "t3_reply_timeout_s": (1.0, 120.0),
    "t5_connect_separation_s": (1.0, 240.0),
    "t6_control_timeout_s": (1.0, 240.0),
    "t7_not_selected_timeout_s": (1.0, 240.0),
    "t8_intercharacter_timeout_s": (1.0, 120.0),
}


class HsmsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One HSMS-SS connection: where, which role, the E37 timers, framing limits.

    `mode` "active" connects to host:port (fabd as host); "passive" listens on
    host:port (simulators; port 0 lets the OS choose).
    """

    host: str = "127.0.0.1"
    port: int = 5000
    mode: Literal["active", "passive"] = "active"
    device_id: int = 0  # session id carried by data messages (E37.1), 0..32767
    t3_reply_timeout_s: float = 45.0  # reply to a W-bit primary; expiry fails that transaction only
    t5_connect_separation_s: float = 10.0  # least time between connect attempts
    t6_control_timeout_s: float = 5.0  # select/deselect/linktest response; expiry closes
    t7_not_selected_timeout_s: float = 10.0  # connected but not SELECTED; expiry closes
    t8_intercharacter_timeout_s: float = 5.0  # gap inside one message; expiry closes
    linktest_interval_s: float = 30.0  # periodic Linktest.req while SELECTED; 0 disables
    reconnect_backoff_max_s: float = 120.0  # ceiling of the jittered exponential backoff
    connect_timeout_s: float = 10.0  # TCP connect attempt
    max_message_bytes: int = 16 * 1024 * 1024  # a longer message is skipped, answered S9F11
    e37_ranges: bool = True  # enforce E37 timer ranges; tests set False for sub-second timers

    def __post_init__(self) -> None:
        if not 0 <= self.device_id <= 0x7FFF:
            raise ValueError(f"device_id {self.device_id} must be within 0..32767")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be within 0..65535")
        for name, (lo, hi) in _E37_RANGES_S.items():
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0 (got {value})")
            if self.e37_ranges and not lo <= value <= hi:
                raise ValueError(f"{name} {value} is outside the E37 range {lo:g}..{hi:g} s")
        if self.linktest_interval_s < 0:
            raise ValueError("linktest_interval_s must be >= 0 (0 disables)")
        if self.reconnect_backoff_max_s < self.t5_connect_separation_s:
            raise ValueError("reconnect_backoff_max_s must be >= t5_connect_separation_s")
        if self.max_message_bytes < 10:
            raise ValueError("max_message_bytes must hold at least a 10-byte header")
