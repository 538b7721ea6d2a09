"""`fabd check-config PATH`: validate a config; print every problem with its key path; exit 2 if any."""

from __future__ import annotations

import argparse
import sys

from daemon import config as config_mod
from daemon.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="TOML config file to check")


# What only the service has: its environment (the unit's Environment=, EnvironmentFile=)
# and its credentials (LoadCredential= files under /run/credentials/<unit>/). An engineer's
# shell has neither, so their absence here is not an error: fabd checks them at start.
_CREDENTIALS_DIR = "/run/credentials/"


def _service_only(key: str, reason: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return ((leaf.endswith("_env") and reason.endswith(" is not set"))
            or (reason.startswith("no such file: ") and _CREDENTIALS_DIR in reason))


def run(args: argparse.Namespace) -> int:
    try:
        config_mod.load(args.path)
    except ConfigError as exc:
        errors = [(k, r) for k, r in exc.problems if not _service_only(k, r)]
        for key, reason in exc.problems:
            if _service_only(key, reason):
                print(f"{args.path}: {key}: {reason} here; not checked: only the service "
                      "has it (the unit's Environment=, EnvironmentFile= or LoadCredential=), "
                      "fabd checks it at start")
        if errors:
            print(ConfigError(errors, exc.source), file=sys.stderr)
            n = len(errors)
            print(f"{args.path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
            return 2
    print(f"{args.path}: ok")
    return 0
