"""HSMS-SS transport (SEMI E37 / E37.1) on asyncio: active host and passive equipment endpoints.

Layers (STYLE.md): `HsmsProtocol` frames bytes and maps system bytes to reply
futures (failing them all when the connection is lost, T8 inside a message);
`HsmsSession` is one TCP connection's E37 state machine (select, deselect,
linktest, separate, reject, T6, T7, periodic linktest, S9F1/S9F7 checks) and
the send/request API; `HsmsActive` (host) and `HsmsPassive` (equipment) are
the per-tool endpoints that outlive connections.

API for the GEM layer (stable; additions only):

    cfg = HsmsConfig(host="10.0.0.5", port=5000, device_id=0, t3_reply_timeout_s=45.0)
    host = HsmsActive(tool_id, cfg, handler, on_selected=gem_startup, on_lost=gem_lost)
    tg.create_task(host.run(), name=f"hsms[{tool_id}]")      # reconnects until host.stop()
    await host.wait_state(HsmsState.SELECTED)
    reply = await host.request(1, 3, L(U4(1001)))             # W-bit, T3 -> Message
    await host.send(6, 12, B(b"\\x00"), reply_to=msg)          # a reply
    host.send_s9(5, msg.header)                               # unknown function

- `handler(session, msg)`: called for every primary data message once
  SELECTED and the device id matched (the HSMS layer already answered S9F1 for
  a wrong device id, S9F7 for a malformed body, Reject.req when not SELECTED).
  It may reply synchronously (`session.reply_nowait(msg, body)`, the fast path)
  or return a coroutine, which runs as a task named `hsms[tool].S6F11`. The GEM
  layer answers unknown stream/function with `session.send_s9(3 | 5, msg.header)`.
  With no handler, W-bit primaries are answered S9F3.
- `on_selected(session)` (awaited) after every successful select, so the GEM
  layer re-establishes communications; `on_lost(reason)` after every loss.
- `HsmsSession` (also passed to handlers): `request()`, `request_nowait()`
  (returns the reply future, no task: the fast path), `send()`,
  `send_nowait()`, `reply()`, `reply_nowait()`, `send_s9()`, `select()`,
  `deselect()`, `linktest()`, `separate()`, `close()`, `.state`, `.closed`.
- `Message`: session_id, stream, function, wbit, ptype, stype, system, body
  (decoded `equipment.secs` item or None), `.header` (10-byte MHEAD), `.sf`,
  `.to_sml()`.
- States: `HsmsState.NOT_CONNECTED | NOT_SELECTED | SELECTED`;
  `endpoint.wait_state(state, timeout_s)`, `endpoint.add_state_listener(cb)`.
- Errors (all `SecsError` → `FabdError`): `HsmsConnectionLostError`,
  `HsmsNotSelectedError`, `HsmsReplyTimeoutError` (T3; retryable, the session
  stays), `HsmsControlTimeoutError` (T6; the connection closed),
  `HsmsRejectedError` (`.reason`), `HsmsStream9Error` (peer answered S9Fx,
  `.s9_function`), `HsmsProtocolError`. A Reject.req with reason 4 (entity not
  selected) while SELECTED also closes the connection, so the supervisor selects
  again; a rejected periodic Linktest.req turns it off for that connection.
- Per-tool metrics (`equipment.metrics`, protocol="hsms"): connected (1 while
  SELECTED), messages in/out, reconnects, T3 timeouts, malformed.
- Passive: `eq = HsmsPassive(tool_id, HsmsConfig(mode="passive", port=0), handler)`;
  `await eq.start()`; `eq.port`; `await eq.run()` serves until `eq.stop()`.
"""

from equipment.hsms.config import HsmsConfig
from equipment.hsms.endpoint import HsmsEndpoint
from equipment.hsms.errors import (
    HsmsConnectionLostError,
    HsmsControlTimeoutError,
    HsmsError,
    HsmsNotSelectedError,
    HsmsProtocolError,
    HsmsRejectedError,
    HsmsReplyTimeoutError,
    HsmsStream9Error,
)
from equipment.hsms.message import (
    CONTROL_SESSION_ID,
    HsmsState,
    Message,
    RejectReason,
    SelectStatus,
    SType,
    frame,
    header_bytes,
    parse_header,
)
from equipment.hsms.protocol import HsmsProtocol
from equipment.hsms.server import HsmsPassive
from equipment.hsms.session import HsmsSession, MessageHandler
from equipment.hsms.supervisor import HsmsActive

__all__ = [
    "CONTROL_SESSION_ID", "HsmsActive", "HsmsConfig", "HsmsConnectionLostError",
    "HsmsControlTimeoutError", "HsmsEndpoint", "HsmsError", "HsmsNotSelectedError", "HsmsPassive",
    "HsmsProtocol", "HsmsProtocolError", "HsmsRejectedError", "HsmsReplyTimeoutError",
    "HsmsSession", "HsmsState", "HsmsStream9Error", "Message", "MessageHandler", "RejectReason",
    "SType", "SelectStatus", "frame", "header_bytes", "parse_header",
]
