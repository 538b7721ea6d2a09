"""SECS-II item types (SEMI E5 §9): each item is a builtin Python value with its format attached.

`L` is a tuple of items; `A` is a str (latin-1 on the wire); `B` and `J` are
bytes; `BOOLEAN` and the numeric formats are tuples of values (an E5 numeric
item is an array; a single value is a 1-tuple). Because they subclass tuple,
str and bytes, decoding builds them with one C-level constructor per item and
users index, iterate and compare them like plain values.
"""

from __future__ import annotations

from typing import Any


class Item:
    """Marker base of every SECS-II item; `fmt` is the E5 format code, `code` the SML name."""

    __slots__ = ()
    fmt: int = -1
    code: str = ""


class _Array(Item, tuple):
    """A numeric or boolean item: a tuple of values."""

    __slots__ = ()
    _kind: type = int
    size: int = 1
    struct_code: str = ""

    def __new__(cls, *values: Any) -> _Array:
        """Build from values: `U4(7)`, `U4(1, 2, 3)` or `U4([1, 2, 3])`."""
        if len(values) == 1 and isinstance(values[0], (list, tuple, range)):
            values = tuple(values[0])
        return tuple.__new__(cls, values)

    @property
    def value(self) -> Any:
        """Return the single value (None when empty, the tuple when several), like secsgem's get()."""
        n = len(self)
        if n == 1:
            return self[0]
        return None if n == 0 else tuple(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Item) and type(other) is not type(self):
            return False
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"{self.code}({', '.join(map(repr, self))})"


class L(Item, tuple):
    """A list of items: `L(U4(1), A("x"))`."""

    __slots__ = ()
    fmt = 0o00
    code = "L"

    def __new__(cls, *items: Item) -> L:
        """Build from child items: `L(a, b)` or `L([a, b])`."""
        if len(items) == 1 and isinstance(items[0], list):
            items = tuple(items[0])
        return tuple.__new__(cls, items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Item) and type(other) is not L:
            return False
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return f"L({', '.join(map(repr, self))})"


class B(Item, bytes):
    """Binary data: `B(b"\\x01\\x02")`."""

    __slots__ = ()
    fmt = 0o10
    code = "B"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Item) and type(other) is not B:
            return False
        return bytes.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = bytes.__hash__

    def __repr__(self) -> str:
        return f"B({bytes(self)!r})"


class J(Item, bytes):
    """JIS-8 text, kept as its raw bytes (JIS X 0201 has no Python codec)."""

    __slots__ = ()
    fmt = 0o21
    code = "J"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Item) and type(other) is not J:
            return False
        return bytes.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = bytes.__hash__

    def __repr__(self) -> str:
        return f"J({bytes(self)!r})"


class A(Item, str):
    """ASCII text (latin-1 on the wire, as secsgem does): `A("LOT-1")`."""

    __slots__ = ()
    fmt = 0o20
    code = "A"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Item) and type(other) is not A:
            return False
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = str.__hash__

    @property
    def value(self) -> str:
        """Return the text as a plain str."""
        return str(self)

    def __repr__(self) -> str:
        return f"A({str(self)!r})"


class BOOLEAN(_Array):
    """Booleans: `BOOLEAN(True)`; any non-zero byte decodes as True (E5)."""

    __slots__ = ()
    fmt = 0o11
    code = "BOOLEAN"
    _kind = bool


class I8(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o30, "I8", 8, "q"


class I1(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o31, "I1", 1, "b"


class I2(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o32, "I2", 2, "h"


class I4(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o34, "I4", 4, "i"


class F8(_Array):
    __slots__ = ()
    fmt, code, size, struct_code, _kind = 0o40, "F8", 8, "d", float


class F4(_Array):
    __slots__ = ()
    fmt, code, size, struct_code, _kind = 0o44, "F4", 4, "f", float


class U8(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o50, "U8", 8, "Q"


class U1(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o51, "U1", 1, "B"


class U2(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o52, "U2", 2, "H"


class U4(_Array):
    __slots__ = ()
    fmt, code, size, struct_code = 0o54, "U4", 4, "I"


NUMERIC_TYPES: tuple[type[_Array], ...] = (I1, I2, I4, I8, U1, U2, U4, U8, F4, F8)
ALL_TYPES: tuple[type[Item], ...] = (L, B, BOOLEAN, A, J, *NUMERIC_TYPES)
BY_FMT: dict[int, type[Item]] = {t.fmt: t for t in ALL_TYPES}
BY_CODE: dict[str, type[Item]] = {t.code: t for t in ALL_TYPES}


def to_python(item: Item) -> Any:
    """Return plain Python values the way secsgem's `get()` does (lists, scalars, str, bytes)."""
    if isinstance(item, L):
        return [to_python(child) for child in item]
    if isinstance(item, A):
        return str(item)
    if isinstance(item, (B, J)):
        return bytes(item)
    n = len(item)
    if n == 1:
        return item[0]
    return list(item)
