"""Domain events: the one vocabulary every equipment adapter speaks to the daemon core.

An adapter (HSMS/GEM, OPC UA, MQTT) turns protocol messages into these
structs and awaits `EventSink.submit()`; `submit` returns only once the events
are durable in the store, so an adapter acknowledges its tool (S6F12, S5F2)
after the await, never before. Process-data points for SPC are the exception:
they are high-rate and go through `EventSink.points()` without a durability
wait.
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec


class E10State(enum.StrEnum):
    """SEMI E10 basic equipment states."""

    PRODUCTIVE = "productive"
    STANDBY = "standby"
    ENGINEERING = "engineering"
    SCHEDULED_DOWN = "scheduled_down"
    UNSCHEDULED_DOWN = "unscheduled_down"
    NON_SCHEDULED = "non_scheduled"


class ControlState(enum.StrEnum):
    """GEM (E30) control states."""

    EQUIPMENT_OFFLINE = "equipment_offline"
    ATTEMPT_ONLINE = "attempt_online"
    HOST_OFFLINE = "host_offline"
    ONLINE_LOCAL = "online_local"
    ONLINE_REMOTE = "online_remote"


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True):
    tool_id: str
    ts: float  # UTC seconds since the epoch, when the adapter saw it


class ToolConnected(_Event, frozen=True, kw_only=True):
    protocol: str  # "hsms" | "opcua" | "mqtt"
    peer: str = ""
    # What the tool runs now, read at connect after its spooled events were replayed: the
    # lot id (a batch's comma-separated), "" for none; None when the tool does not say.
    running_lot: str | None = None
    running_recipe: str = ""


class ToolDisconnected(_Event, frozen=True, kw_only=True):
    protocol: str
    reason: str = ""


class ControlStateChanged(_Event, frozen=True, kw_only=True):
    state: ControlState


class E10StateChanged(_Event, frozen=True, kw_only=True):
    state: E10State
    reason: str = ""


class AlarmSet(_Event, frozen=True, kw_only=True):
    alid: int
    text: str = ""


class AlarmCleared(_Event, frozen=True, kw_only=True):
    alid: int
    text: str = ""


class ProcessStarted(_Event, frozen=True, kw_only=True):
    lot_id: str
    recipe_id: str = ""
    chamber: str = ""


class ProcessCompleted(_Event, frozen=True, kw_only=True):
    lot_id: str
    recipe_id: str = ""
    chamber: str = ""
    ok: bool = True  # False: the tool judged the lot non-conforming (rework candidate)
    parameters: dict[str, float] = {}


class TerminalMessage(_Event, frozen=True, kw_only=True):
    text: str


class RecipeReport(_Event, frozen=True, kw_only=True):
    """What the tool says about a recipe body (after an S7F5 upload or an OPC UA read)."""

    ppid: str
    checksum: str  # sha256 hex of the body as the tool holds it
    size_bytes: int


DomainEvent = (
    ToolConnected
    | ToolDisconnected
    | ControlStateChanged
    | E10StateChanged
    | AlarmSet
    | AlarmCleared
    | ProcessStarted
    | ProcessCompleted
    | TerminalMessage
    | RecipeReport
)


class ProcessPoint(msgspec.Struct, frozen=True, array_like=True):
    """One process-data value for SPC: (tool, parameter) is the chart key's base."""

    tool_id: str
    parameter: str
    value: float
    ts: float
    lot_id: str = ""
    chamber: str = ""


class EventSink(Protocol):
    """Where adapters deliver what they heard. Implemented by the daemon core."""

    async def submit(self, events: list[DomainEvent]) -> None:
        """Hand over events; returns once they are durable (then acknowledge the tool)."""

    def points(self, points: list[ProcessPoint]) -> None:
        """Hand over SPC points; never blocks, may count and drop when the queue is full."""


class RemoteCommand(enum.StrEnum):
    """Host → tool commands every adapter maps to its protocol (S2F41 RCMD, OPC UA methods)."""

    PP_SELECT = "PP-SELECT"
    START = "START"
    STOP = "STOP"
    PAUSE = "PAUSE"
    RESUME = "RESUME"
    ABORT = "ABORT"


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """The tool's answer to a remote command (HCACK for SECS/GEM)."""

    accepted: bool
    code: int = 0  # HCACK: 0 done, 4 will be done later, others refused
    reason: str = ""


class ToolControl(Protocol):
    """What the daemon core may ask of a connected tool, whatever its protocol."""

    tool_id: str

    async def command(self, rcmd: RemoteCommand, params: dict[str, str]) -> CommandResult:
        """Send a remote command and return the tool's answer."""

    async def recipe_list(self) -> list[str]:
        """List the process programs the tool holds (S7F19)."""

    async def recipe_upload(self, ppid: str) -> bytes:
        """Fetch a recipe body from the tool (S7F5)."""

    async def recipe_download(self, ppid: str, body: bytes) -> bool:
        """Send a recipe body to the tool (S7F3); True when accepted."""


class RecordingSink:
    """An EventSink that keeps everything in memory: for tests, simulators and benches."""

    def __init__(self) -> None:
        self.events: list[DomainEvent] = []
        self.point_list: list[ProcessPoint] = []

    async def submit(self, events: list[DomainEvent]) -> None:
        self.events.extend(events)

    def points(self, points: list[ProcessPoint]) -> None:
        self.point_list.extend(points)

    def of(self, kind: type) -> list:
        """Return the recorded events of one kind."""
        return [e for e in self.events if isinstance(e, kind)]
