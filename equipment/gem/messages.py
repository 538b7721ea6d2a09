"""GEM message bodies the host sends and the shapes it reads back (SEMI E5/E30), pure functions.

Builders return `equipment.secs` items; readers take decoded items and return
plain values, raising GemProtocolError when a body is not the shape E5 gives it
(the session answers S9F7 for primaries, and fails the request for replies).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from equipment.events import RecipeReport
from equipment.gem.errors import GemProtocolError
from equipment.secs import BOOLEAN, U4, A, B, Item, L
from equipment.secs.items import _Array


def ids(values: Iterable[int]) -> L:
    """Return L of U4 ids (SVIDs, CEIDs, RPTIDs, ...)."""
    return L(*(U4(v) for v in values))


def clock_text(now: dt.datetime | None = None) -> A:
    """Return the E30 16-character clock YYYYMMDDhhmmsscc (UTC)."""
    now = now or dt.datetime.now(dt.UTC)
    return A(now.strftime("%Y%m%d%H%M%S") + f"{now.microsecond // 10000:02d}")


def s1f13() -> L:
    return L()  # host: empty MDLN/SOFTREV list


def s2f33_delete_all(dataid: int) -> L:
    return L(U4(dataid), L())


def s2f33_define(dataid: int, reports: Sequence[tuple[int, Sequence[int]]]) -> L:
    return L(U4(dataid), L(*(L(U4(rptid), ids(vids)) for rptid, vids in reports)))


def s2f35_link(dataid: int, links: Sequence[tuple[int, Sequence[int]]]) -> L:
    return L(U4(dataid), L(*(L(U4(ceid), ids(rptids)) for ceid, rptids in links)))


def s2f37(enable: bool, ceids: Sequence[int] = ()) -> L:
    return L(BOOLEAN(enable), ids(ceids))


def s5f3(enable: bool, alid: int) -> L:
    return L(B(b"\x80" if enable else b"\x00"), U4(alid))


def s2f41(rcmd: str, params: dict[str, str]) -> L:
    return L(A(rcmd), L(*(L(A(name), A(str(value))) for name, value in params.items())))


def s2f23(trid: int, period_s: float, total_samples: int, group_size: int,
          vids: Sequence[int]) -> L:
    return L(U4(trid), A(dsper(period_s)), U4(total_samples), U4(group_size), ids(vids))


def dsper(period_s: float) -> str:
    """Return an E5 DSPER: hhmmss, or hhmmsscc when the period has hundredths."""
    centis = round(period_s * 100)
    hours, rest = divmod(centis, 360000)
    minutes, rest = divmod(rest, 6000)
    seconds, cc = divmod(rest, 100)
    text = f"{hours:02d}{minutes:02d}{seconds:02d}"
    return text + f"{cc:02d}" if cc else text


# ---- readers ------------------------------------------------------------------------------

def value(item: Item | None) -> Any:
    """Return the plain value of a leaf (str, bytes, number, tuple) or a list for L."""
    if item is None:
        return None
    if isinstance(item, L):
        return [value(child) for child in item]
    if isinstance(item, A):
        return str(item)
    if isinstance(item, bytes):  # B, J
        return bytes(item)
    if isinstance(item, _Array):
        return item.value
    raise GemProtocolError(f"unexpected item {item!r}")


def code(item: Item | None, what: str) -> int:
    """Read a one-byte acknowledge code (B[1], or any integer item)."""
    if isinstance(item, bytes) and len(item) >= 1:
        return item[0]
    if isinstance(item, _Array) and len(item) >= 1 and isinstance(item[0], int):
        return int(item[0])
    raise GemProtocolError(f"{what}: expected a one-byte code, got {item!r}")


def as_list(item: Item | None, what: str, length: int | None = None) -> L:
    if not isinstance(item, L) or (length is not None and len(item) != length):
        shape = f"L[{length}]" if length is not None else "L"
        raise GemProtocolError(f"{what}: expected {shape}, got {item!r}")
    return item


def integer(item: Item | None, what: str) -> int:
    if isinstance(item, _Array) and len(item) == 1 and type(item[0]) is int:
        return item[0]
    v = value(item)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    raise GemProtocolError(f"{what}: expected an integer id, got {item!r}")


def integer_or_zero(v: Any) -> int:
    """Return an int from a plain value (e.g. a spool count SV), 0 when it is not one."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, tuple) and v and isinstance(v[0], int):
        return int(v[0])
    return 0


def read_s6f11(body: Item | None) -> tuple[int, int, list[tuple[int, L]]]:
    """Return (DATAID, CEID, [(RPTID, L of values)]) of an S6F11 body; values stay items.

    The driver profile converts only the values it uses (hot path: one per S6F11).
    """
    if type(body) is not L or len(body) != 3:
        raise GemProtocolError(f"S6F11: expected L[3], got {body!r}")
    reports = []
    rpt = body[2]
    if type(rpt) is not L:
        raise GemProtocolError(f"S6F11 RPT: expected L, got {rpt!r}")
    for report in rpt:
        if type(report) is not L or len(report) != 2 or type(report[1]) is not L:
            raise GemProtocolError(f"S6F11 report: expected L[2] (RPTID, L), got {report!r}")
        reports.append((integer(report[0], "RPTID"), report[1]))
    return integer(body[0], "DATAID"), integer(body[1], "CEID"), reports


def read_s5f1(body: Item | None) -> tuple[bool, int, str]:
    """Return (alarm set, ALID, ALTX) of an S5F1 body (ALCD bit 7 = set)."""
    top = as_list(body, "S5F1", 3)
    alcd = code(top[0], "ALCD")
    return bool(alcd & 0x80), integer(top[1], "ALID"), str(value(top[2]) or "")


def read_s6f1(body: Item | None) -> tuple[int, int, str, list[Any]]:
    """Return (TRID, SMPLN, STIME, [SV values]) of an S6F1 body."""
    top = as_list(body, "S6F1", 4)
    return (integer(top[0], "TRID"), integer(top[1], "SMPLN"), str(value(top[2])),
            [value(v) for v in as_list(top[3], "S6F1 SV")])


def read_terminal(body: Item | None, what: str) -> tuple[int, str]:
    """Return (TID, TEXT) of an S10F1/S10F3 body."""
    top = as_list(body, what, 2)
    text = value(top[1])
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return code(top[0], "TID"), str(text if text is not None else "")


def recipe_report(tool_id: str, ppid: str, body: bytes) -> RecipeReport:
    """Return the RecipeReport (sha256 hex, size) of a recipe body as the tool holds it."""
    return RecipeReport(tool_id=tool_id, ts=time.time(), ppid=ppid,
                        checksum=hashlib.sha256(body).hexdigest(), size_bytes=len(body))
