"""SECS-II (SEMI E5) item codec: fast decode, encode, SML rendering, typed errors.

API (stable; additions only):

- Item types, one per E5 format, each a builtin value with `.fmt` (format
  code) and `.code` (SML name):
  `L(*items)` (tuple of items), `A(str)` (latin-1 text), `B(bytes)`,
  `J(bytes)` (JIS-8, raw bytes), `BOOLEAN(*bools)`, and the numeric arrays
  `U1 U2 U4 U8 I1 I2 I4 I8 F4 F8` built as `U4(7)`, `U4(1, 2)` or `U4([1, 2])`.
  Numeric/boolean items are tuples (`item[0]`, or `.value`: the single value,
  None when empty, the tuple when several). Items of different formats never
  compare equal; an item compares equal to the plain value of its own shape
  (`A("x") == "x"`, `U4(1, 2) == (1, 2)`).
- `encode(item | None) -> bytes`; `encode_into(item, bytearray)` appends.
  Raises `SecsEncodeError` (out-of-range values, non-latin-1 `A`, > 16 MiB).
- `decode(buf) -> Item | None` for a whole body (empty body: None);
  `decode_from(buf, pos=0, end=-1) -> (item, next_pos)` for a slice of a larger
  buffer (bytes, bytearray or memoryview; the input is never copied).
  Any malformed input raises `SecsDecodeError` (`.s9_function == 7`: answer
  S9F7 illegal data), never anything else.
- `to_sml(item) -> str`: SML text for logs.
- `to_python(item)`: plain values shaped like secsgem's `get()` (tests, oracles).
- Errors: `SecsError` (root, `.s9_function`), `SecsDecodeError`, `SecsEncodeError`.
"""

from equipment.secs.codec import decode, decode_from, encode, encode_into
from equipment.secs.errors import SecsDecodeError, SecsEncodeError, SecsError
from equipment.secs.items import (
    ALL_TYPES,
    BOOLEAN,
    BY_CODE,
    BY_FMT,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    NUMERIC_TYPES,
    U1,
    U2,
    U4,
    U8,
    A,
    B,
    Item,
    J,
    L,
    to_python,
)
from equipment.secs.sml import to_sml

__all__ = [
    "ALL_TYPES", "BOOLEAN", "BY_CODE", "BY_FMT", "F4", "F8", "I1", "I2", "I4", "I8",
    "NUMERIC_TYPES", "U1", "U2", "U4", "U8", "A", "B", "Item", "J", "L", "SecsDecodeError",
    "SecsEncodeError", "SecsError", "decode", "decode_from", "encode", "encode_into",
    "to_python", "to_sml",
]
