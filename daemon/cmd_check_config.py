"""`fabd check-config PATH`: validate a config; print every problem with its key path; exit 2 if any."""

from __future__ import annotations

import argparse
import sys

from daemon import config as config_mod
from daemon.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="TOML config file to check")


def run(args: argparse.Namespace) -> int:
    try:
        config_mod.load(args.path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        n = len(exc.problems)
        print(f"{args.path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 2
    print(f"{args.path}: ok")
    return 0
