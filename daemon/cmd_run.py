"""`fabd run --config PATH`: the production daemon."""

from __future__ import annotations

import argparse
import os
import sys

from daemon import config as config_mod
from daemon.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="PATH",
                        help="TOML config file (see systemd/fabd.example.toml)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # numba reads NUMBA_CACHE_DIR at import: set it before anything imports numba.
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(cfg.service.cache_directory, "numba"))
    from daemon import assemble, log, runner

    log.setup(cfg.service.log_level)
    _raise_open_files()
    app, _ = assemble.build(cfg, config_path=args.config)
    return runner.run(app.run(), cfg.service.event_loop)


def _raise_open_files() -> None:
    """One socket per tool: lift the soft open-file limit to the hard one (systemd sets both)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
