"""`fabd status`: ask a running daemon (its /status endpoint) and print a readable table."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:9464",
                        help="the daemon's HTTP endpoint ([http] listen; default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


def run(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = json.load(resp)
    except (urllib.error.URLError, OSError) as exc:
        print(f"fabd status: cannot reach {url}: {exc}; is the daemon running "
              f"(systemctl status fabd) and is [http] listen this address?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(render(status))
    return 0 if status.get("healthy") else 1


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*(str(x) for x in r)) for r in rows]
    return "\n".join(out)


def render(status: dict) -> str:
    """Render the /status JSON as the tables a shift lead reads."""
    tick = status.get("tick", {})
    parts = [
        f"health: {status.get('health')}   ready: {status.get('ready')}   "
        f"tick: #{tick.get('count')} last {1000 * tick.get('last_duration_s', 0):.1f} ms, "
        f"overruns {tick.get('overruns')}",
    ]
    not_ready = [k for k, v in status.get("readiness", {}).items() if not v]
    if not_ready:
        parts.append("not ready: " + ", ".join(not_ready))
    tools = status.get("tools")
    if tools:
        parts.append("\nTOOLS")
        parts.append(_table([[t["tool"], t.get("group", ""), t.get("protocol", ""),
                              "up" if t.get("connected") else "DOWN", t.get("e10", ""),
                              t.get("lot", "") or "-", t.get("inhibited", "") or ""]
                             for t in tools],
                            ["tool", "group", "proto", "link", "E10 state", "lot", "inhibit"]))
    wip = status.get("wip")
    if wip:
        parts.append("\nWIP")
        parts.append(_table([[w["product"], w["step"], w["lots"], w["wafers"], w.get("held", 0)]
                             for w in wip], ["product", "step", "lots", "wafers", "held"]))
    counters = status.get("counters")
    if counters:
        parts.append("\n" + "   ".join(f"{k}: {v}" for k, v in counters.items()))
    comps = status.get("components", [])
    restarted = [c for c in comps if c.get("restarts")]
    parts.append(f"\ncomponents: {len(comps)}" + (
        "; restarted: " + ", ".join(f"{c['name']}×{c['restarts']}" for c in restarted)
        if restarted else ""))
    return "\n".join(parts)
