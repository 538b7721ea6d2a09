"""`python -m bench NAME [--quick] [--json]`: run one benchmark; `list` names them; `all` runs every one."""

from __future__ import annotations

import importlib
import sys

# name -> module (each module has `main(argv: list[str]) -> int` and a docstring first line)
BENCHMARKS: dict[str, str] = {
    "bus": "bench.bus",
    "secs_codec": "bench.secs_codec",
    "hsms": "bench.hsms",
    "dispatch": "bench.dispatch",
    "spc": "bench.spc",
    "opcua": "bench.opcua",
    "mqtt": "bench.mqtt",
    "e2e": "bench.e2e",
    "fabsim": "bench.fabsim_bench",
}


def _available() -> dict[str, str]:
    out = {}
    for name, mod in BENCHMARKS.items():
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            out[name] = mod
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    avail = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks:", ", ".join(avail))
        return 0
    name, rest = argv[0], argv[1:]
    if name == "list":
        for n, mod in avail.items():
            doc = (importlib.import_module(mod).__doc__ or "").strip().splitlines()
            print(f"{n:<12} {doc[0] if doc else ''}")
        return 0
    if name == "all":
        rc = 0
        for n, mod in avail.items():
            print(f"[bench] running {n}", file=sys.stderr, flush=True)
            rc |= importlib.import_module(mod).main(rest)
        return rc
    if name not in avail:
        print(f"error: unknown benchmark {name!r}; known: {', '.join(avail)}", file=sys.stderr)
        return 2
    return importlib.import_module(avail[name]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
