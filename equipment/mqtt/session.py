"""The per-broker MQTT session: subscribe, map JSON payloads to SPC points and tool state.

`MqttSession.run()` supervises one broker forever: it connects with a stable
client id and a persistent session (the broker keeps QoS 1 messages while we
are away), subscribes every configured topic filter, and turns each message
into SPC points (`sink.points`, batched) and domain events such as E10 state
changes and ToolConnected (`sink.submit`, in order). Malformed payloads are
counted and logged at most once per topic per interval; they never stop the
session. When the broker goes away the session says so once, reconnects with
jittered exponential backoff, re-subscribes and re-publishes the retained tool
states.

Delivery: a QoS 1 message is acknowledged (PUBACK) only once every event it
produced, and every event queued before it, is durable (`sink.submit` has
returned); PUBACKs go out in the order the PUBLISH packets arrived (MQTT §4.6),
so a data message's ack waits behind an earlier state message's. A message
whose events are not yet durable when fabd stops, crashes or loses the
connection is not acknowledged, and the broker sends it again on the next
connection of the persistent session: at least once, never lost (a re-sent
state the session already holds maps to no new event but still waits for the
first one to be durable). SPC points wait for nothing but that order: they are
in-memory analytics, lost by a crash whether acknowledged or not. When the
event queue is full the session refuses the events, acknowledges nothing more
on that connection and drops it, so the broker sends them again. QoS 0 has no
ack and no such guarantee; QoS 2 mappings are subscribed at QoS 1, since a
QoS 2 receiver takes the message over (PUBREC) before it can see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiomqtt
import msgspec
from aiomqtt.exceptions import MqttConnectError

from daemon.cancel import raise_if_cancelled
from equipment import metrics
from equipment.events import (
    DomainEvent,
    E10State,
    E10StateChanged,
    EventSink,
    ProcessPoint,
    ToolConnected,
    ToolDisconnected,
)
from equipment.mqtt.client import Route, TopicRouter, build_client, paho_client
from equipment.mqtt.config import MqttBrokerConfig, TopicMapping
from equipment.mqtt.errors import MalformedPayload, MqttAdapterError
from equipment.reconnect import Outages
from equipment.statewatch import StateWatch

log = logging.getLogger(__name__)

PROTOCOL = "mqtt"
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


EVENT_QUEUE_SIZE = 10_000


class _IngestQueue(asyncio.Queue):
    """Stands in for aiomqtt's incoming-message queue: maps each message where paho delivers it.

    aiomqtt's message iterator costs a task and an asyncio.wait per message; handing
    the message straight to the session from the socket read callback removes that
    (see bench/mqtt.py). The iterator then only tells us when the connection is gone.
    """

    ingest: Callable[[Any], None]

    def put_nowait(self, item: Any) -> None:
        type(self).ingest(item)


class _Acks:
    """The PUBACKs of one connection, sent in the order the PUBLISH packets arrived.

    MQTT 3.1.1 / 5 §4.6: a receiver sends PUBACKs in the order of the PUBLISH packets,
    so a message that needs nothing durable still waits behind an earlier one that does.
    Each waiting message carries the number of event lists the session must have made
    durable before it may be acknowledged (see MqttSession._on_message).
    """

    __slots__ = ("_client", "_pending", "cut", "stalled")

    def __init__(self, client: Any) -> None:
        self._client = client  # the paho client: ack(mid, qos), disconnect()
        self._pending: deque[tuple[int, int]] = deque()  # (mid, event lists to be durable)
        self.stalled = False
        self.cut: asyncio.Timeout | None = None  # the connection's scope: end() expires it

    def arrived(self, mid: int, needed: int, durable: int) -> None:
        """Acknowledge QoS 1 message `mid` now if nothing is ahead of it, else queue it."""
        if self.stalled:
            return
        if not self._pending and needed <= durable:
            self._client.ack(mid, 1)
        else:
            self._pending.append((mid, needed))

    def complete(self, mid: int) -> None:
        """Send the PUBCOMP of QoS 2 message `mid` (no order rule ties it to PUBACKs)."""
        self._client.ack(mid, 2)

    def release(self, durable: int) -> None:
        """Acknowledge, in order, the messages whose events are all durable now."""
        pending = self._pending
        ack = self._client.ack
        while pending and pending[0][1] <= durable and not self.stalled:
            ack(pending.popleft()[0], 1)

    def stall(self) -> None:
        """Acknowledge nothing more and drop the connection: the broker re-sends the rest."""
        if self.stalled:
            return
        self.stalled = True
        self._pending.clear()
        self._client.disconnect()
        self.end()

    def end(self) -> None:
        """End the connection's scope wherever the session is in it."""
        if self.cut is not None and not self.cut.expired():
            self.cut.reschedule(0)  # in the past: expires on the next loop iteration


class MqttSessionState(enum.StrEnum):
    """Where the session is; tests and the daemon can wait on changes."""

    NOT_CONNECTED = "not_connected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


# CONNACK refusals that need someone to fix the credentials or the broker's config:
# 0x85 client id not valid, 0x86 bad user name or password, 0x87 not authorized,
# 0x8A banned, 0x8C bad authentication method (MQTT 5; paho maps the 3.1.1 codes 2, 4, 5
# to 0x85, 0x86, 0x87).
_REFUSED = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})


def is_refusal(exc: BaseException) -> bool:
    """Tell whether a connect failure is the broker refusing us rather than an outage."""
    if not isinstance(exc, MqttConnectError):
        return False
    rc = exc.rc
    value = getattr(rc, "value", rc)
    return value in _REFUSED or (isinstance(rc, int) and rc in (2, 4, 5))


def _loss(ingest: asyncio.Task[None] | None) -> aiomqtt.MqttError | None:
    """Return the MqttError that ended the message iterator (the connection is gone), if any."""
    if ingest is None or not ingest.done() or ingest.cancelled():
        return None
    exc = ingest.exception()
    return exc if isinstance(exc, aiomqtt.MqttError) else None


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise MalformedPayload(f"{what} is not a string: {value!r:.40}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedPayload(f"{what} is not a number: {value!r:.40}")
    return float(value)


class _Compiled:
    """A topic mapping with its field paths split once."""

    __slots__ = ("chamber", "lot", "mapping", "special", "state", "state_values", "tool", "ts",
                 "values")

    def __init__(self, m: TopicMapping) -> None:
        def path(p: str) -> tuple[str, ...]:
            return tuple(p.split(".")) if p else ()

        self.mapping = m
        self.values = [(path(f), name) for f, name in m.values.items()]
        self.tool, self.lot, self.chamber = path(m.tool_field), path(m.lot_field), \
            path(m.chamber_field)
        self.ts, self.state = path(m.ts_field), path(m.state_field)
        self.state_values = m.state_values
        # Top-level fields that are not process values when "every numeric field" is read.
        self.special = {f for f in (m.tool_field, m.lot_field, m.chamber_field, m.ts_field,
                                    m.state_field) if f}


class MqttSession(StateWatch[MqttSessionState]):
    """One broker: SPC points and tool state out, retained tool state published back."""

    def __init__(self, config: MqttBrokerConfig, sink: EventSink, *,
                 current_lot: Callable[[str], str] | None = None,
                 lot_at: Callable[[str, float], str] | None = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        self.config = config
        self.broker_id = config.broker_id
        self.sink = sink
        self.current_lot = current_lot  # tool id -> lot in process (from the daemon core)
        self.lot_at = lot_at  # (tool id, time) -> lot in process then (from the daemon core)
        self._connecting_since = 0.0  # when the current connection's attempt began
        self.e10_states: dict[str, E10State] = {}
        self.received_total = 0
        self.malformed_total = 0
        self.connects = 0
        self.failed_attempts = 0
        self._clock = clock
        self._rng = random.Random(seed)
        self._init_state(MqttSessionState.NOT_CONNECTED)
        self._client: aiomqtt.Client | None = None
        self._router = TopicRouter(config.subscriptions)
        self._compiled = {id(m): _Compiled(m) for m in config.subscriptions}
        self._points: list[ProcessPoint] = []
        self._flush_scheduled = False
        self._events: asyncio.Queue[list[DomainEvent]] | None = None
        # Event lists put on self._events, and how many of them sink.submit() has made
        # durable, since run() began: a QoS 1 message is acknowledged once every list
        # queued up to its own is durable (_Acks), across reconnects too.
        self._queued_lists = 0
        self._durable_lists = 0
        self._acks: _Acks | None = None  # the current connection's PUBACKs
        self._refusing = False  # the event queue was full at the last attempt
        self._queue_type = type("IngestQueue", (_IngestQueue,),
                                {"ingest": staticmethod(self._on_message)})
        self._tools_up: set[str] = set()
        self._retained: dict[str, bytes] = {}  # tool id -> last state payload
        self._malformed_logged: dict[str, tuple[float, int]] = {}  # topic -> (when, suppressed)
        labels = (self.broker_id, PROTOCOL)
        self._m_received = metrics.MESSAGES_RECEIVED.labels(*labels)
        self._m_malformed = metrics.MALFORMED.labels(*labels)
        self._m_connected = metrics.CONNECTED.labels(*labels)

    # -- supervisor -----------------------------------------------------------------------

    async def run(self) -> None:
        """Supervise the broker forever: connect, subscribe, ingest, reconnect (until cancelled)."""
        self.config.validate()
        self._events = asyncio.Queue(EVENT_QUEUE_SIZE)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver_loop(), name=f"mqtt-deliver[{self.broker_id}]")
            tg.create_task(self._connection_loop(), name=f"mqtt-connect[{self.broker_id}]")

    async def _connection_loop(self) -> None:
        cfg = self.config
        outages = Outages(cfg.reconnect_min_s, cfg.reconnect_max_s, self._rng)
        try:
            while True:
                raise_if_cancelled()
                self._set_state(MqttSessionState.CONNECTING)
                self._connecting_since = self._clock()
                client = build_client(cfg, queue_type=self._queue_type)
                inner = paho_client(client)
                # PUBACK only once what a message produced is durable (_on_message); set
                # before connecting, as the broker sends a persistent session's backlog at once.
                inner.manual_ack_set(True)
                acks = self._acks = _Acks(inner)
                ingest: asyncio.Task[None] | None = None
                try:
                    # The backlog may come with the CONNACK and comes before the SUBACKs, and
                    # aiomqtt's subscribe() does not notice a disconnect: _Acks.stall() and
                    # the end of the message iterator expire this scope to end the
                    # connection wherever it is.
                    async with asyncio.timeout(None) as acks.cut, client, \
                            self._ingesting(client, acks) as ingest:
                        for sub in cfg.subscriptions:
                            # At most QoS 1: a QoS 2 receiver sends PUBREC, and the broker
                            # lets go of the message, before paho hands it to us; only QoS 1
                            # lets the ack wait until the events are durable.
                            await client.subscribe(sub.filter(), qos=min(sub.qos, 1),
                                                   timeout=cfg.subscribe_timeout_s)
                        raise_if_cancelled()
                        self._client = client
                        if self.connects:
                            metrics.RECONNECTS.labels(self.broker_id, PROTOCOL).inc()
                        self.connects += 1
                        self._m_connected.set(1)
                        if outages.up():
                            log.info("broker %s: back: MQTT session up at %s:%d after %d "
                                     "failed attempt(s)", self.broker_id, cfg.host, cfg.port,
                                     outages.failures)
                        elif self.connects == 1:
                            log.info("broker %s: MQTT session up at %s:%d (client id %s)",
                                     self.broker_id, cfg.host, cfg.port, cfg.client_id)
                        await self._republish(client)
                        raise_if_cancelled()
                        self._set_state(MqttSessionState.CONNECTED)
                        await ingest
                except (aiomqtt.MqttError, TimeoutError) as exc:
                    if acks.stalled:  # _Acks.stall() ended the connection (events refused)
                        reason = "dropped by fabd to have refused messages sent again"
                    else:  # a TimeoutError here: the message iterator saw the link go
                        exc = _loss(ingest) or exc
                        reason = str(exc)
                    self._acks = None  # what it still held comes again on the next connection
                    lost = self._client is not None
                    self._client = None
                    self._m_connected.set(0)
                    self._set_state(MqttSessionState.NOT_CONNECTED)
                    if lost:
                        if outages.lost():
                            log.warning("broker %s: MQTT connection lost (%s); reconnecting",
                                        self.broker_id, reason)
                    else:
                        self.failed_attempts += 1
                        refusal = is_refusal(exc)
                        say = outages.failed(refused=refusal)
                        if say and refusal:  # said even after the outage's WARNING
                            log.error("broker %s: %s:%d refused us (%s); check the "
                                      "credentials and client id %s; retrying",
                                      self.broker_id, cfg.host, cfg.port, reason,
                                      cfg.client_id)
                        elif say:
                            log.warning("broker %s: cannot connect to %s:%d (%s); retrying",
                                        self.broker_id, cfg.host, cfg.port, reason)
                    # Also after a failed attempt: the backlog before the SUBACKs announces
                    # its tools.
                    await self._tools_down(reason)
                    await asyncio.sleep(outages.delay_s())
        finally:
            self._acks = None
            self._client = None
            self._m_connected.set(0)
            self._set_state(MqttSessionState.NOT_CONNECTED)

    @contextlib.asynccontextmanager
    async def _ingesting(self, client: aiomqtt.Client, acks: _Acks
                         ) -> AsyncIterator[asyncio.Task[None]]:
        """Run the message iterator from the CONNACK on: it sees a lost connection at once.

        aiomqtt's subscribe() and publish() wait for their SUBACK or PUBACK until their
        timeout even when the connection is gone (a broker restart during the backlog
        that comes before the SUBACKs: subscribe_timeout_s); the iterator's end ends the
        connection's scope instead.
        """
        ingest = asyncio.create_task(self._ingest_loop(client),
                                     name=f"mqtt-ingest[{self.broker_id}]")
        ingest.add_done_callback(lambda task: task.cancelled() or acks.end())
        try:
            yield ingest
        finally:
            if not ingest.done():
                ingest.cancel()
                await asyncio.wait({ingest})

    async def _ingest_loop(self, client: aiomqtt.Client) -> None:
        # Messages are handled in _on_message as they arrive; the iterator stays empty
        # and raises MqttError when the connection is lost.
        async for message in client.messages:
            self._on_message(message)

    def _on_message(self, message: Any) -> None:
        # Runs inside paho's read callback: nothing may escape, or the connection breaks.
        # paho acknowledges nothing by itself (manual ack): every QoS 1/2 message is
        # acknowledged here or by _deliver_loop, whatever became of it.
        events: list[DomainEvent] = []
        try:
            events = self.handle(message.topic.value, message.payload,
                                 retained=bool(message.retain))
        except Exception as exc:  # a bug, not bad data: counted and logged like bad data
            self._malformed(str(getattr(message.topic, "value", "?")),
                            f"mapping failed: {exc!r}")
        queued = not events or self._emit(events)
        qos = message.qos
        acks = self._acks
        if qos == 0 or acks is None:
            return  # QoS 0 has no ack; no window: the connection is gone, the broker re-sends
        if qos == 2:
            # Only from a QoS 2 subscription of an older fabd: PUBREC went out before we saw
            # it, holding PUBCOMP back would gain nothing (and PUBCOMP has no order rule).
            acks.complete(message.mid)
        elif not queued:
            acks.stall()
        else:
            # Wait for every event list queued so far, this message's own included: a
            # message re-sent after a reconnect may map to nothing new (its state change
            # is already queued from the first delivery) and must still wait for it. SPC
            # points (sink.points) wait for nothing but this order: they are in-memory
            # analytics that a crash loses whether or not they were acknowledged, so holding
            # their ack longer would only have them delivered twice.
            acks.arrived(message.mid, self._queued_lists, self._durable_lists)

    def _emit(self, events: list[DomainEvent]) -> bool:
        """Queue events for sink.submit(); False (and logged) when the queue is full."""
        assert self._events is not None
        try:
            self._events.put_nowait(events)
        except asyncio.QueueFull:
            if not self._refusing:  # once per episode, not once per reconnect attempt
                self._refusing = True
                log.error("broker %s: event queue full (%d), refusing events (QoS 1 messages "
                          "are not acknowledged: the broker sends them again after a "
                          "reconnect); is the daemon core stuck?", self.broker_id,
                          EVENT_QUEUE_SIZE)
            # Forget what the refused events announced, so a re-sent message announces it.
            for e in events:
                if isinstance(e, E10StateChanged):
                    self.e10_states.pop(e.tool_id, None)
                elif isinstance(e, ToolConnected):
                    self._tools_up.discard(e.tool_id)
            return False
        self._refusing = False
        self._queued_lists += 1
        return True

    async def _deliver_loop(self) -> None:
        assert self._events is not None
        queue = self._events
        while True:
            batch = await queue.get()
            lists = 1
            while not queue.empty():
                batch.extend(queue.get_nowait())
                lists += 1
            await self.sink.submit(batch)
            self._durable_lists += lists
            if self._acks is not None:
                self._acks.release(self._durable_lists)

    async def _tools_down(self, reason: str) -> None:
        now = self._clock()
        events: list[DomainEvent] = [
            ToolDisconnected(tool_id=t, ts=now, protocol=PROTOCOL, reason=reason)
            for t in sorted(self._tools_up)]
        self._tools_up.clear()
        if events:
            self._emit(events)

    # -- messages -> points and events ----------------------------------------------------

    def handle(self, topic: str, payload: Any, *, retained: bool = False) -> list[DomainEvent]:
        """Map one message; queue its SPC points and return its domain events (maybe none).

        A retained message (sent because we subscribed) gives its tool state, never points.
        """
        self.received_total += 1
        self._m_received.inc()
        route = self._router.route(topic)
        if route is None:
            return []  # a broader filter than the mappings (e.g. '#'): not ours
        try:
            return self._map(route, payload, retained)
        except MalformedPayload as exc:
            self._malformed(topic, str(exc))
            return []

    def _map(self, route: Route, payload: Any, retained: bool = False) -> list[DomainEvent]:
        c = self._compiled[id(route.mapping)]
        try:
            doc = _decode_json(payload)
        except msgspec.DecodeError:
            raise MalformedPayload(f"not JSON: {payload[:40]!r}") from None
        tool_id = route.tool_id
        if c.tool:
            tool_id = _text(_get(doc, c.tool), "tool field") or tool_id
        if not tool_id:
            raise MalformedPayload("no tool id in topic or payload")
        now = self._clock()
        points = self._points
        n0 = len(points)
        try:
            state = self._values(c, route, doc, tool_id, now)
        except MalformedPayload:
            del points[n0:]  # all of a message or nothing
            raise
        if retained:
            # The broker sends the retained copy again at every SUBSCRIBE, so at every
            # reconnect: a reading already charted (or queued for us by the persistent
            # session), not a new one. Its state is deduplicated below; its points are not.
            del points[n0:]
        events: list[DomainEvent] = []
        if tool_id not in self._tools_up:
            self._tools_up.add(tool_id)
            events.append(ToolConnected(tool_id=tool_id, ts=now, protocol=PROTOCOL,
                                        peer=f"{self.config.host}:{self.config.port}"))
        if state is not None and self.e10_states.get(tool_id) is not state:
            self.e10_states[tool_id] = state
            events.append(E10StateChanged(tool_id=tool_id, ts=now, state=state))
        if len(points) > n0 and not self._flush_scheduled:
            # One sink.points() call per loop iteration, not per message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_points)
        return events

    def _values(self, c: _Compiled, route: Route, doc: Any, tool_id: str, now: float
                ) -> E10State | None:
        """Append the message's points; return its tool state (None when it has none)."""
        ts = now
        if c.ts:
            raw_ts = _get(doc, c.ts)
            if raw_ts is not None:
                ts = _number(raw_ts, "ts field")
        lot = ""
        if c.lot:
            lot = _text(_get(doc, c.lot), "lot field")
        elif c.ts and self.lot_at is not None and ts < self._connecting_since:
            # Sent before this connection, kept by the broker (a persistent session's
            # backlog): the lot of its time, which may have ended while we were away.
            lot = self.lot_at(tool_id, ts)
        elif self.current_lot is not None:
            lot = self.current_lot(tool_id)
        chamber = _text(_get(doc, c.chamber), "chamber field") if c.chamber else ""
        points = self._points
        n0 = len(points)
        if route.parameter:
            value = doc.get("value") if isinstance(doc, dict) else doc
            points.append(ProcessPoint(tool_id, route.parameter, _number(value, "value"), ts,
                                       lot, chamber))
        elif not isinstance(doc, dict):
            raise MalformedPayload(f"expected a JSON object, got {type(doc).__name__}")
        elif c.values:
            for path, name in c.values:
                value = _get(doc, path)
                if value is not None:
                    points.append(ProcessPoint(tool_id, name, _number(value, name), ts, lot,
                                               chamber))
        else:
            for name, value in doc.items():
                if name not in c.special and not isinstance(value, bool) and \
                        isinstance(value, int | float):
                    points.append(ProcessPoint(tool_id, name, float(value), ts, lot, chamber))
        state = None
        if c.state:
            raw = _get(doc, c.state)
            if raw is not None:
                state = self._e10(c, raw)
        if state is None and len(points) == n0:
            raise MalformedPayload("no configured value or state in the payload")
        return state

    @staticmethod
    def _e10(c: _Compiled, raw: Any) -> E10State:
        key = str(raw)
        try:
            return c.state_values[key] if c.state_values else E10State(key.lower())
        except (KeyError, ValueError):
            raise MalformedPayload(f"unknown tool state {key!r:.40}") from None

    def _flush_points(self) -> None:
        self._flush_scheduled = False
        points, self._points = self._points, []
        if points:
            self.sink.points(points)

    def _malformed(self, topic: str, why: str) -> None:
        self.malformed_total += 1
        self._m_malformed.inc()
        now = time.monotonic()
        last, suppressed = self._malformed_logged.get(topic, (None, 0))
        if last is not None and now - last < self.config.malformed_log_interval_s:
            self._malformed_logged[topic] = (last, suppressed + 1)
            return
        if len(self._malformed_logged) > 10_000:
            self._malformed_logged.clear()
        self._malformed_logged[topic] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("broker %s: malformed message on %s rejected: %s%s", self.broker_id, topic,
                    why, more)

    # -- retained tool state for dashboards -----------------------------------------------

    async def publish_tool_state(self, tool_id: str, state: Mapping[str, Any] | msgspec.Struct
                                 ) -> bool:
        """Publish a tool's state as a retained message; False when not connected (kept for later)."""
        if not self.config.state_topic:
            raise MqttAdapterError(f"broker {self.broker_id}: state_topic not configured")
        payload = _encode_json(state)
        self._retained[tool_id] = payload
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(self.config.state_topic.format(tool_id=tool_id), payload,
                                 qos=self.config.state_qos, retain=True)
        except aiomqtt.MqttError as exc:
            log.info("broker %s: tool %s state not published (%s); will retry on reconnect",
                     self.broker_id, tool_id, exc)
            return False
        metrics.MESSAGES_SENT.labels(self.broker_id, PROTOCOL).inc()
        return True

    async def _republish(self, client: aiomqtt.Client) -> None:
        # A broker without persistence forgets retained messages on restart: publish them again.
        for tool_id, payload in list(self._retained.items()):
            await client.publish(self.config.state_topic.format(tool_id=tool_id), payload,
                                 qos=self.config.state_qos, retain=True)
