"""`fabd run --config PATH`: the production daemon."""

from __future__ import annotations

import argparse
import logging
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
        return _refuse(exc)
    # numba reads NUMBA_CACHE_DIR at import: set it before anything imports numba.
    configured_cache = os.path.join(cfg.service.cache_directory, "numba")
    os.environ.setdefault("NUMBA_CACHE_DIR", configured_cache)
    problems = _unwritable_directories(cfg.service.state_directory, os.environ["NUMBA_CACHE_DIR"])
    if problems:
        # exit 2, not a crash in the store warm-up: Restart=on-failure would retry it for ever
        return _refuse(ConfigError(problems, args.config))
    from daemon import assemble, log, runner

    log.setup(cfg.service.log_level)
    if os.path.normpath(os.environ["NUMBA_CACHE_DIR"]) != os.path.normpath(configured_cache):
        # the environment wins (the unit's Environment=), so say so instead of ignoring the key
        logging.getLogger("fabd").warning(
            "service.cache_directory = %s is not used: the environment's NUMBA_CACHE_DIR=%s "
            "wins (Environment= in the unit); set both to the same place",
            cfg.service.cache_directory, os.environ["NUMBA_CACHE_DIR"])
    _raise_open_files()
    app, _ = assemble.build(cfg, config_path=args.config)
    return runner.run(app.run(), cfg.service.event_loop)


def _refuse(exc: ConfigError) -> int:
    """Print why the config is refused, at error priority in the journal; return exit code 2."""
    from daemon.log import stderr_is_journal

    text = str(exc)
    if stderr_is_journal():  # journalctl -p err, and the red lines, show why fabd did not start
        text = "\n".join(f"<3>{line}" for line in text.splitlines())
    print(text, file=sys.stderr)
    return 2


def _unwritable_directories(state_dir: str, numba_dir: str) -> list[tuple[str, str]]:
    """Return (key, reason) for each directory fabd must write to and cannot, as this user."""
    import tempfile

    hint = ("; under systemd only StateDirectory=/CacheDirectory= (/var/lib/fabd, "
            "/var/cache/fabd) and ReadWritePaths= are writable (ProtectSystem=strict)")
    out: list[tuple[str, str]] = []
    for key, path in (("service.state_directory", state_dir),
                      ("service.cache_directory (NUMBA_CACHE_DIR)", numba_dir)):
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            out.append((key, f"cannot write to {path} as user {_user()}: "
                             f"{exc.strerror or exc}{hint}"))
    return out


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _raise_open_files() -> None:
    """One socket per tool: lift the soft open-file limit to the hard one (systemd sets both)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
