"""Encode and decode SECS-II items (SEMI E5 §9.2): format byte, 1–3 length bytes, big-endian data.

Decoding is one flat loop with an explicit stack (no recursion, so a hostile
nesting depth cannot raise RecursionError), C-level constructors per item
(`tuple.__new__`, `str.__new__`) and cached `struct` unpackers for arrays; it
accepts bytes, bytearray or memoryview and never copies the input buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from equipment.secs.errors import SecsDecodeError, SecsEncodeError
from equipment.secs.items import (
    BOOLEAN,
    BY_FMT,
    F8,
    NUMERIC_TYPES,
    A,
    B,
    Item,
    J,
    L,
    _Array,
)

Buffer = bytes | bytearray | memoryview

_MAX_LENGTH = 0xFFFFFF  # E5: at most 3 length bytes
_new_tuple = tuple.__new__
_new_str = str.__new__
_new_bytes = bytes.__new__

# fmt -> (item class, element size, struct code) for the numeric formats
_NUMERIC: dict[int, tuple[type[_Array], int, str]] = {
    t.fmt: (t, t.size, t.struct_code) for t in NUMERIC_TYPES}
# (format byte << 24 | byte length) -> Struct.unpack_from, for small arrays (the common case)
_UNPACKERS: dict[int, Callable] = {}
_PACKERS: dict[tuple[str, int], Callable] = {}
_UNPACKER_CACHE_MAX_BYTES = 512
# format byte -> numeric item class (any length-byte count)
_CLS_BY_FB: list = [None] * 256
for _fmt, (_cls, _, _) in _NUMERIC.items():
    for _nlb in (1, 2, 3):
        _CLS_BY_FB[_fmt << 2 | _nlb] = _cls
# leaves with one length byte that are interned (texts, integers, booleans; not floats)
_INTERNED_FBS = frozenset(f << 2 | 1 for f in (0o20, 0o11, 0o30, 0o31, 0o32, 0o34, 0o50, 0o51,
                                               0o52, 0o54))
_INTERNED: dict[bytes, Item] = {}
_INTERN_MAX_BYTES = 40
_INTERN_MAX_ITEMS = 8192
_EMPTY_L = _new_tuple(L, ())
_UNPACK_F8 = struct.Struct(">d").unpack_from


def decode_from(buf: Buffer, pos: int = 0, end: int = -1) -> tuple[Item, int]:
    """Decode one item starting at `pos` (stopping at `end`); return it and the position after it.

    Raises SecsDecodeError (S9F7) on any malformed or truncated data.
    """
    if end < 0:
        end = len(buf)
    elif end < len(buf):
        buf = memoryview(buf)[:end]  # so reading past `end` raises IndexError; no copy
    is_bytes = type(buf) is bytes
    stack: list[tuple[list, int]] = []
    # the open list and how many children it still expects; a one-slot sentinel at the top
    children: list = []
    remaining = 1
    unpackers = _UNPACKERS
    cls_by_fb = _CLS_BY_FB
    interned_fbs = _INTERNED_FBS
    interned = _INTERNED
    new_tuple = _new_tuple
    l_cls = L
    f8_cls = F8
    unpack_f8 = _UNPACK_F8
    try:
        while True:
            fb = buf[pos]
            nlb = fb & 3
            if nlb == 1:
                length = buf[pos + 1]
                pos += 2
            elif nlb == 2:
                length = buf[pos + 1] << 8 | buf[pos + 2]
                pos += 3
            elif nlb == 3:
                length = buf[pos + 1] << 16 | buf[pos + 2] << 8 | buf[pos + 3]
                pos += 4
            else:
                raise SecsDecodeError("format byte with zero length bytes", pos)
            if fb < 4:  # a list
                if length:
                    if pos + 2 * length > end:  # every child needs at least two bytes
                        raise SecsDecodeError(f"list of {length} items does not fit the data", pos)
                    stack.append((children, remaining))
                    children = []
                    remaining = length
                    continue
                item = _EMPTY_L
            else:
                stop = pos + length
                if stop > end:
                    raise SecsDecodeError(f"item length {length} runs past the data", pos)
                if fb == 0x81 and length == 8:  # one F8: the process values of a report
                    item = new_tuple(f8_cls, unpack_f8(buf, pos))
                elif fb in interned_fbs and length <= _INTERN_MAX_BYTES:
                    # short texts and integers repeat (ids, lot ids, states): share the
                    # immutable item, keyed by its encoded bytes including the format byte
                    raw = buf[pos - 2:stop] if is_bytes else bytes(buf[pos - 2:stop])
                    item = interned.get(raw)
                    if item is None:
                        item = _decode_leaf(buf, fb, pos, stop)
                        if len(interned) >= _INTERN_MAX_ITEMS:
                            interned.clear()
                        interned[raw] = item
                else:
                    unpack = unpackers.get(fb << 24 | length)
                    if unpack is not None:
                        item = new_tuple(cls_by_fb[fb], unpack(buf, pos))
                    else:
                        item = _decode_leaf(buf, fb, pos, stop)
                pos = stop
            children.append(item)
            remaining -= 1
            while not remaining:
                if not stack:
                    return children[0], pos
                item = new_tuple(l_cls, children)
                children, remaining = stack.pop()
                children.append(item)
                remaining -= 1
    except IndexError:
        raise SecsDecodeError("truncated item", pos) from None


def _decode_leaf(buf: Buffer, fb: int, pos: int, stop: int) -> Item:
    fmt = fb >> 2
    if fmt in _NUMERIC:
        cls, size, code = _NUMERIC[fmt]
        length = stop - pos
        if length % size:
            raise SecsDecodeError(f"{cls.code} length {length} is not a multiple of {size}", pos)
        unpack = struct.Struct(f">{length // size}{code}").unpack_from
        if length <= _UNPACKER_CACHE_MAX_BYTES:
            _UNPACKERS[fb << 24 | length] = unpack
        return _new_tuple(cls, unpack(buf, pos))
    if fmt == 0o20:
        return _new_str(A, buf[pos:stop], "latin-1")
    if fmt == 0o10:
        return _new_bytes(B, memoryview(buf)[pos:stop])
    if fmt == 0o11:
        return _new_tuple(BOOLEAN, map(bool, buf[pos:stop]))
    if fmt == 0o21:
        return _new_bytes(J, memoryview(buf)[pos:stop])
    raise SecsDecodeError(f"unknown format code {fmt:o} (octal)", pos)


def decode(buf: Buffer) -> Item | None:
    """Decode a whole SECS-II message body; an empty body (header-only message) is None.

    Raises SecsDecodeError (S9F7) on malformed data or bytes left over after the item.
    """
    if not len(buf):
        return None
    item, pos = decode_from(buf, 0, len(buf))
    if pos != len(buf):
        raise SecsDecodeError(f"{len(buf) - pos} bytes after the item", pos)
    return item


def _header(fmt: int, length: int) -> bytes:
    if length <= 0xFF:
        return bytes((fmt << 2 | 1, length))
    if length <= 0xFFFF:
        return bytes((fmt << 2 | 2, length >> 8, length & 0xFF))
    if length <= _MAX_LENGTH:
        return bytes((fmt << 2 | 3, length >> 16, (length >> 8) & 0xFF, length & 0xFF))
    raise SecsEncodeError(f"item of {length} bytes/items exceeds the E5 maximum {_MAX_LENGTH}")


def _parts(item: Item, parts: list) -> None:
    """Append the encoded pieces of `item` to `parts` (iterative: depth costs no recursion)."""
    ap = parts.append
    h1 = _H1
    stack = [iter((item,))]
    while stack:
        for it in stack[-1]:
            cls = type(it)
            if cls is L:
                n = len(it)
                ap(h1[0][n] if n < 256 else _header(0, n))
                if n:
                    stack.append(iter(it))
                    break
                continue
            if cls is A:
                try:
                    data = it.encode("latin-1")
                except UnicodeEncodeError as exc:
                    raise SecsEncodeError(f"A item {it!r} is not latin-1 text") from exc
            elif cls is B or cls is J:
                data = it
            elif cls is BOOLEAN:
                data = bytes(map(bool, it))
            elif isinstance(it, _Array):
                key = (cls.struct_code, len(it))
                pack = _PACKERS.get(key)
                if pack is None:
                    pack = struct.Struct(f">{len(it)}{cls.struct_code}").pack
                    if len(it) <= 64:
                        _PACKERS[key] = pack
                try:
                    data = pack(*it)
                except (struct.error, OverflowError) as exc:  # OverflowError: F4 out of range
                    raise SecsEncodeError(f"{cls.code} value out of range in {it!r}: {exc}") from exc
            else:
                raise SecsEncodeError(f"not a SECS-II item: {it!r} ({cls.__name__})")
            n = len(data)
            ap(h1[cls.fmt][n] if n < 256 else _header(cls.fmt, n))
            ap(data)
        else:
            stack.pop()


def encode(item: Item | None) -> bytes:
    """Encode an item to its SECS-II bytes (None, for a header-only message, is b"")."""
    if item is None:
        return b""
    parts: list = []
    _parts(item, parts)
    return b"".join(parts)


def encode_into(item: Item | None, out: bytearray) -> None:
    """Append an item's SECS-II bytes to `out` (framing a message after its header)."""
    if item is not None:
        parts: list = []
        _parts(item, parts)
        out += b"".join(parts)


# format code -> the 256 two-byte headers with a one-byte length (the common case)
_H1: dict[int, list[bytes]] = {fmt: [bytes((fmt << 2 | 1, n)) for n in range(256)] for fmt in BY_FMT}


assert set(BY_FMT) == {0, 0o10, 0o11, 0o20, 0o21, *_NUMERIC}
