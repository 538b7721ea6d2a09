"""SECS-II codec: our bytes equal secsgem's, both decoders agree, malformed input gives S9F7."""

from __future__ import annotations

import math

import pytest
import secsgem.secs.variables as sv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secsgem.secs.variables.dynamic import ANYVALUE

from equipment.secs import (
    BOOLEAN,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    U1,
    U2,
    U4,
    U8,
    A,
    B,
    Item,
    J,
    L,
    SecsDecodeError,
    SecsEncodeError,
    decode,
    decode_from,
    encode,
    to_python,
    to_sml,
)

_INT_RANGES = {I1: (-(2**7), 2**7 - 1), I2: (-(2**15), 2**15 - 1), I4: (-(2**31), 2**31 - 1),
               I8: (-(2**63), 2**63 - 1), U1: (0, 2**8 - 1), U2: (0, 2**16 - 1),
               U4: (0, 2**32 - 1), U8: (0, 2**64 - 1)}
_SECSGEM = {U1: sv.U1, U2: sv.U2, U4: sv.U4, U8: sv.U8, I1: sv.I1, I2: sv.I2, I4: sv.I4,
            I8: sv.I8, F4: sv.F4, F8: sv.F8, BOOLEAN: sv.Boolean}
_OURS = {v: k for k, v in _SECSGEM.items()}


def _leaves() -> st.SearchStrategy[Item]:
    ints = [st.lists(st.integers(lo, hi), max_size=6).map(cls) for cls, (lo, hi) in _INT_RANGES.items()]
    return st.one_of(
        *ints,
        st.lists(st.floats(-3.3999999521443642e38, 3.3999999521443642e38, width=32), max_size=4).map(F4),  # secsgem's range
        st.lists(st.floats(-1.79e308, 1.79e308), max_size=4).map(F8),  # secsgem's range
        st.lists(st.booleans(), max_size=4).map(BOOLEAN),
        st.text(st.characters(max_codepoint=255), max_size=300).map(A),
        st.binary(max_size=300).map(B),
    )


items = st.recursive(_leaves(), lambda kids: st.lists(kids, max_size=6).map(L), max_leaves=30)


def to_secsgem(item: Item) -> sv.Base:
    """Build the secsgem variable tree for one of our items (the oracle)."""
    if isinstance(item, L):
        arr = sv.Array(ANYVALUE)
        arr.data = [to_secsgem(child) for child in item]
        return arr
    if isinstance(item, A):
        return sv.String(str(item))
    if isinstance(item, B):
        return sv.Binary(bytes(item))
    return _SECSGEM[type(item)](list(item))


def from_secsgem(var: sv.Base) -> Item:
    """Turn a secsgem-decoded variable tree back into our items."""
    if isinstance(var, sv.Dynamic):
        var = var.value
    if isinstance(var, sv.Array):
        return L([from_secsgem(child) for child in var.data])
    if isinstance(var, sv.String):
        return A(var.value)
    if isinstance(var, sv.Binary):
        return B(bytes(var.value))
    return _OURS[type(var)](list(var.value))


def _same(a: Item, b: Item) -> bool:
    """Compare trees, treating float values bit-for-bit-equal after a float32 round trip."""
    if type(a) is not type(b) or len(a) != len(b):
        return False
    if isinstance(a, L):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (F4, F8)):
        return all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items)
def test_our_bytes_equal_secsgem_bytes_and_both_decoders_agree(item: Item) -> None:
    ours = encode(item)
    assert ours == to_secsgem(item).encode()
    decoded = decode(ours)
    assert _same(decoded, item)
    oracle = ANYVALUE()
    assert oracle.decode(ours) == len(ours)
    assert _same(from_secsgem(oracle), decoded)


@pytest.mark.parametrize(("item", "length_bytes"), [
    (B(b"\x00" * 255), 1), (B(b"\x00" * 256), 2), (B(b"\x00" * 65535), 2),
    (B(b"\x07" * 65536), 3), (A("x" * 70000), 3), (L([U1(1)] * 300), 2),
    (U2(list(range(40000))), 3),
])
def test_length_forms_match_secsgem(item: Item, length_bytes: int) -> None:
    ours = encode(item)
    assert ours[0] & 3 == length_bytes
    assert ours == to_secsgem(item).encode()
    assert decode(ours) == item


def test_jis8_round_trips_as_raw_bytes() -> None:
    item = L(J(b"\xb1\xb2ABC"), J(b""))
    assert encode(item) == b"\x01\x02\x45\x05\xb1\xb2ABC\x45\x00"
    assert decode(encode(item)) == item


def test_decode_from_reads_a_memoryview_slice_in_place() -> None:
    body = encode(L(U4(3001), A("LOT-7"), B(b"\x01" * 1000)))
    frame = bytearray(b"\xff" * 14 + body + b"\xee" * 5)
    item, end = decode_from(memoryview(frame), 14, 14 + len(body))
    assert end == 14 + len(body)
    assert item[0] == U4(3001) and item[1] == "LOT-7" and len(item[2]) == 1000
    frame[14 + 4] = 0  # the decoded item does not alias the receive buffer
    assert item[2] == b"\x01" * 1000


def test_items_of_different_formats_are_not_equal() -> None:
    assert U4(1) != U1(1)
    assert U4(1) == U4(1) and U4(1) == (1,)
    assert A("x") == "x" and A("x") != B(b"x") and B(b"x") != J(b"x") and B(b"x") == b"x"
    assert U4(7).value == 7 and U4(1, 2).value == (1, 2) and U4().value is None
    assert to_python(L(U4(1), A("a"), F8(1.5, 2.5))) == [1, "a", [1.5, 2.5]]


def test_sml_shows_the_tree_for_a_person() -> None:
    text = to_sml(L(U4(3001), L(A("LOT-1"), F8(351.25), BOOLEAN(True), B(b"\x01"), L())))
    assert text.splitlines() == [
        "<L [2]", "  <U4 3001>", "  <L [5]", '    <A "LOT-1">', "    <F8 351.25>",
        "    <BOOLEAN TRUE>", "    <B 0x01>", "    <L [0]>", "  >", ">"]
    assert to_sml(A("a\x00b")) == '<A "a" 0x00 "b">'


@pytest.mark.parametrize("bad", [
    U1(256), I1(-129), U4(-1), U4(1.5), A("€"), F4(1e300),
])
def test_unencodable_values_raise_encode_error(bad: Item) -> None:
    with pytest.raises(SecsEncodeError):
        encode(bad)


@pytest.mark.parametrize(("data", "why"), [
    (b"\x01", "truncated"), (b"\x00", "zero length bytes"), (b"\x01\x02\xa5\x01\x01", "list"),
    (b"\xb1\x03\x00\x00\x00", "multiple"), (b"\x41\x05ab", "past"), (b"\x05\x00", "format"),
    (b"\xa5\x01\x01\x00", "after the item"), (b"\x03\xff\xff\xff", "list"),
])
def test_malformed_items_raise_decode_error_mapping_to_s9f7(data: bytes, why: str) -> None:
    with pytest.raises(SecsDecodeError, match=why) as err:
        decode(data)
    assert err.value.s9_function == 7


def test_deep_nesting_is_not_a_recursion_error() -> None:
    deep = b"\x01\x01" * 100_000 + b"\x01\x00"
    assert isinstance(decode(deep), L)
    with pytest.raises(SecsDecodeError):
        decode(deep[:-1])


def _fuzz_check(data: bytes) -> None:
    try:
        decode(data)
    except SecsDecodeError:
        pass


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    _fuzz_check(data)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items, st.data())
def test_fuzz_mutated_encodings_raise_only_typed_errors(item: Item, data: st.DataObject) -> None:
    raw = bytearray(encode(item))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i:]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    _fuzz_check(bytes(raw))
    _fuzz_check(memoryview(bytes(raw)))
    _fuzz_check(bytearray(raw))
