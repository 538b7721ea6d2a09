"""`fabd` command line: one entry point, subcommands implemented where their code lives.

Each subcommand is a module with `add_arguments(parser)` and `run(args) -> int`,
imported only when that subcommand runs (so `fabd --help` stays fast and a
missing optional package only breaks the command that needs it).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.cmd_run", "run the production daemon (what systemd starts)"),
    "check-config": ("daemon.cmd_check_config", "validate a config file; print every error with its key"),
    "demo": ("daemon.demo", "run a self-contained simulated fab end to end"),
    "status": ("daemon.cmd_status", "print a running daemon's tools, WIP and health as a table"),
    "schema": ("daemon.cmd_schema", "print the JSON Schema of every published event and ERP command"),
    "consume": ("daemon.consumer", "reference ERP consumer: read a stream, dedupe, check WIP snapshots"),
    "spc": ("spc.cli", "SPC tools for engineers: check a series against the rules, plot a chart"),
    "sim": ("bench.fabsim.cli", "what-if simulation of an SMT2020 fab with the production dispatcher"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabd",
        description="fabd: real-time core of a semiconductor fab MES "
        "(SECS/GEM, OPC UA, MQTT; dispatch; SPC; Redis streams to ERP).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name in sys.argv[1:2] or "--help-all" in sys.argv:
            _plug(module, p)
    return parser


def _plug(module: str, parser: argparse.ArgumentParser) -> None:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        parser.set_defaults(_missing=f"{exc}")
        return
    mod.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    if args.command is None:
        parser.print_help()
        return 2
    missing = getattr(args, "_missing", None)
    if missing:
        print(f"fabd {args.command}: not available in this build ({missing})", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
