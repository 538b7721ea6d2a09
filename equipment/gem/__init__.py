"""GEM (SEMI E30) host: one session per tool over our HSMS-SS, driver profiles, domain events.

API for the daemon (stable; additions only):

    from equipment.gem import GemHostSession, GemToolConfig
    cfg = GemToolConfig(tool_id="ETCH01", hsms=HsmsConfig(host="10.1.2.3", port=5000),
                        profile="fabd-sim", trace_period_s=1.0)
    session = GemHostSession(cfg, sink)                  # constructor does nothing
    tg.create_task(session.run(), name=f"hsms[{cfg.tool_id}]")   # until cancelled
    session.state          # GemSessionState: hsms, communicating, control, e10, lot_id, ...
    await session.wait_for(lambda s: s.communicating, timeout_s=30)
    await session.command(RemoteCommand.START, {"LOTID": "LOT1"})  # CommandResult (HCACK)

- `GemToolConfig` (config.py): tool_id, `hsms: HsmsConfig` (host, port, device id, E37
  timers, backoff), profile name, CommDelay, trace period/group size, clock and spool flags.
- `GemDriverProfile` (profile.py): which CEIDs/VIDs/ALIDs/state values mean what;
  `FABD_SIM` is the default; `PROFILES`, `get_profile(name)`, `register_profile(p)`.
  `kind="gem"` (PP-SELECT + START); a GEM300 kind (E40/E94 jobs) fits the same roles.
- `GemHostSession` (session.py) implements `equipment.events.ToolControl` (command,
  recipe_list, recipe_upload, recipe_download) plus recipe_delete, recipe_report
  (sha256 → RecipeReport), read_status (S1F3), read_constants (S2F13), trace_init
  (S2F23), send_terminal (S10F3). Commands raise GemNotCommunicatingError until the
  start-up is done and while the tool is away.
- On every SELECTED (first connect, reconnect, power-cycled tool) it runs the E30
  start-up: S1F13 (retried every comm_retry_s until COMMACK 0), S1F17, S2F31, S2F37
  disable all, S2F33 delete all, S2F33 define, S2F35 link, S2F37 enable, S5F3 per ALID,
  S7F19, S2F23 (if trace_period_s), S6F23 transmit spooled data (asked again while
  the tool answers RSDA 1 busy, and let it arrive: until no S6F11/S5F1 came for
  spool_settle_s, trace data not counted; each at most spool_drain_max_s),
  then S1F3 status read → ToolConnected, ControlStateChanged, E10StateChanged.
  A step the tool does not support (S2F31, S5F3, S7F19, S2F23, S6F23 answered S9Fx, an
  abort or a reject, or not answered within T3) is skipped with one WARNING naming the
  option that turns it off, and not sent again while the session lives (a T3: after
  two completed start-ups in a row without an answer).
- What the tool sends goes to the sink in arrival order: S6F11 → events → `await
  sink.submit()` → S6F12 (acknowledged only once durable); S5F1 → AlarmSet/Cleared →
  S5F2; S6F1 → `sink.points()` plus `<name>_trace_mean/min/max/n` on the lot's
  ProcessCompleted; S10F1/S10F3 → TerminalMessage; unknown stream/function → S9F3/S9F5;
  a malformed body → S9F7 (the HSMS layer answers undecodable items and wrong device ids).
- Errors (errors.py): GemError (FabdError) → GemNotCommunicatingError / GemTimeoutError /
  GemStartupError (retry), GemConfigError (reconfigure), GemProtocolError (give up).
"""

from equipment.gem.config import GemToolConfig
from equipment.gem.errors import (
    GemConfigError,
    GemError,
    GemNotCommunicatingError,
    GemProtocolError,
    GemStartupError,
    GemTimeoutError,
)
from equipment.gem.messages import recipe_report
from equipment.gem.profile import (
    FABD_SIM,
    PROFILES,
    EventLink,
    EventTranslator,
    GemDriverProfile,
    ParameterDef,
    ReportDef,
    get_profile,
    register_profile,
)
from equipment.gem.session import HCACK_TEXT, GemHostSession, GemSessionState

__all__ = [
    "FABD_SIM", "HCACK_TEXT", "PROFILES", "EventLink", "EventTranslator", "GemConfigError",
    "GemDriverProfile", "GemError", "GemHostSession", "GemNotCommunicatingError",
    "GemProtocolError", "GemSessionState", "GemStartupError", "GemTimeoutError",
    "GemToolConfig", "ParameterDef", "ReportDef", "get_profile", "recipe_report",
    "register_profile",
]
