"""`fabd schema`: print the JSON Schema of every published event and every ERP command."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compact", action="store_true", help="one line instead of indented")


def run(args: argparse.Namespace) -> int:
    from daemon.events import json_schema

    print(json.dumps(json_schema(), indent=None if args.compact else 2, sort_keys=True))
    return 0
