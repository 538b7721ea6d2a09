"""Render SECS-II items as SML text for logs and debugging (`<L [2] <U4 1> <A "x">>`)."""

from __future__ import annotations

from equipment.secs.items import BOOLEAN, A, B, Item, J, L, _Array

_MAX_VALUES = 64  # long arrays and binaries are elided in logs


def _text(item: str) -> str:
    if item.isprintable() and '"' not in item:
        return f'"{item}"'
    parts: list[str] = []
    run = ""
    for ch in item:
        if ch.isprintable() and ch != '"':
            run += ch
            continue
        if run:
            parts.append(f'"{run}"')
            run = ""
        parts.append(f"0x{ord(ch):02X}")
    if run:
        parts.append(f'"{run}"')
    return " ".join(parts)


def _line(item: Item) -> str:
    if isinstance(item, A):
        return f"<A {_text(str(item))}>" if item else "<A>"
    if isinstance(item, (B, J)):
        shown = " ".join(f"0x{b:02X}" for b in item[:_MAX_VALUES])
        more = f" ...({len(item)} bytes)" if len(item) > _MAX_VALUES else ""
        return f"<{item.code} {shown}{more}>" if item else f"<{item.code}>"
    if isinstance(item, BOOLEAN):
        shown = " ".join("TRUE" if v else "FALSE" for v in item[:_MAX_VALUES])
    elif isinstance(item, _Array):
        shown = " ".join(repr(v) for v in item[:_MAX_VALUES])
    else:
        raise TypeError(f"not a SECS-II item: {item!r}")
    more = f" ...({len(item)} values)" if len(item) > _MAX_VALUES else ""
    return f"<{item.code} {shown}{more}>" if len(item) else f"<{item.code}>"


def to_sml(item: Item | None, indent: int = 2) -> str:
    """Return the SML text of an item, one item a line, lists indented (None renders as "")."""
    if item is None:
        return ""
    lines: list[str] = []

    def walk(it: Item, depth: int) -> None:
        pad = " " * (indent * depth)
        if isinstance(it, L):
            if not it:
                lines.append(f"{pad}<L [0]>")
                return
            lines.append(f"{pad}<L [{len(it)}]")
            for child in it:
                walk(child, depth + 1)
            lines.append(f"{pad}>")
        else:
            lines.append(pad + _line(it))

    walk(item, 0)
    return "\n".join(lines)
