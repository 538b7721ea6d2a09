"""Random bodies at the GEM primary handler: only GemProtocolError (→ S9F7) may come out.

The HSMS layer already rejects undecodable bytes; this throws well-formed SECS-II
items of the wrong shape (a lot id that is a list, an ALCD that is empty, ...)
at every message the host accepts from a tool.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from equipment.events import RecordingSink
from equipment.gem import messages as m
from equipment.gem.config import GemToolConfig
from equipment.gem.errors import GemProtocolError
from equipment.gem.session import GemHostSession
from equipment.hsms.message import Message
from equipment.secs import BOOLEAN, F4, F8, I1, I4, U1, U2, U4, A, B, L, decode, encode

leaves = st.one_of(
    st.text(alphabet=st.characters(max_codepoint=255), max_size=8).map(A),
    st.binary(max_size=4).map(B),
    st.lists(st.integers(0, 255), max_size=3).map(U1),
    st.lists(st.integers(0, 2**16 - 1), max_size=3).map(U2),
    st.lists(st.integers(0, 2**32 - 1), max_size=3).map(U4),
    st.lists(st.integers(-128, 127), max_size=2).map(I1),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2).map(I4),
    st.lists(st.floats(allow_nan=True, width=32), max_size=2).map(F4),
    st.lists(st.floats(allow_nan=True), max_size=2).map(F8),
    st.lists(st.booleans(), max_size=2).map(BOOLEAN),
)
items = st.recursive(leaves, lambda children: st.lists(children, max_size=4).map(
    lambda xs: L(*xs)), max_leaves=12)


def s6f11_like() -> st.SearchStrategy:
    """Mostly the right skeleton with random leaves, so the deep paths get exercised."""
    report = st.tuples(st.sampled_from([3001, 3002, 3003, 3004, 3005, 7]).map(U4),
                       st.lists(items, max_size=8).map(lambda xs: L(*xs)))
    return st.tuples(st.sampled_from([3001, 3002, 3003, 3004, 3005]).map(U4),
                     st.lists(report, max_size=3)).map(
        lambda t: L(U4(1), t[0], L(*(L(r, v) for r, v in t[1]))))


class FakeConnection:
    """Stands in for the HSMS session a primary came on: records what the GEM layer answers."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, int]] = []
        self.s9: list[int] = []

    async def reply(self, msg: Message, body: object = None) -> None:
        self.replies.append((msg.stream, msg.function + 1))

    def send_s9(self, function: int, header: bytes) -> None:
        self.s9.append(function)


def _session() -> GemHostSession:
    return GemHostSession(GemToolConfig(tool_id="FUZZ", trace_period_s=1.0), RecordingSink())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_function=st.sampled_from([(6, 11), (5, 1), (6, 1), (10, 1), (10, 3), (1, 1),
                                        (1, 13), (6, 11), (6, 11)]),
       body=st.one_of(st.none(), items, s6f11_like()))
def test_any_body_is_handled_or_refused_with_a_typed_error(
        stream_function: tuple[int, int], body: object) -> None:
    session = _session()
    conn = FakeConnection()
    # Round-trip through the codec so the items look exactly like received ones.
    received = decode(encode(body)) if body is not None else None
    msg = Message(0, stream_function[0], stream_function[1], True, 0, 0, 1, received)

    async def handle() -> None:
        session._lot_trace.clear()
        try:
            await session._handle(conn, msg)  # type: ignore[arg-type]
        except GemProtocolError:
            return
        assert conn.replies == [(msg.stream, msg.function + 1)]

    asyncio.run(handle())


@settings(max_examples=150, deadline=None)
@given(body=items)
def test_message_readers_raise_only_gem_protocol_errors(body: object) -> None:
    received = decode(encode(body))
    for reader in (m.read_s6f11, m.read_s5f1, m.read_s6f1):
        try:
            reader(received)
        except GemProtocolError:
            pass
    try:
        m.read_terminal(received, "S10F1")
    except GemProtocolError:
        pass
