"""Wire the daemon from its config: which components run, what warms up before READY, what stops how."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import msgspec

from daemon.app import App
from daemon.config import FabdConfig
from daemon.core import FabCore
from daemon.http import HttpEndpoint

log = logging.getLogger("fabd.assemble")


def build(config: FabdConfig, *, config_path: str | Path | None = None,
          recipes: dict[str, bytes] | None = None) -> tuple[App, FabCore]:
    """Return the App and its FabCore with every component the config asks for (nothing runs yet)."""
    app = App(config)
    core = FabCore(config, recipes=recipes)
    core.install(app)
    if config.http.enabled:
        http = HttpEndpoint(app, status=core.status)
        app.add_warmup("http", http.start)
        app.add_component("http", http.run)
        app.http = http  # type: ignore[attr-defined]
    if config_path is not None:
        app.add_warmup("sighup", lambda: _install_sighup(core, Path(config_path)))
    return app, core


def _changed_sections(running: Any, new: Any) -> list[str]:
    """The config sections (as [name]) that differ, [dispatch.policy] aside."""
    old_d, new_d = msgspec.to_builtins(running), msgspec.to_builtins(new)
    for d in (old_d, new_d):
        d.get("dispatch", {}).pop("policy", None)
    return [f"[{k}]" for k in sorted(set(old_d) | set(new_d)) if old_d.get(k) != new_d.get(k)]


def _install_sighup(core: FabCore, path: Path) -> None:
    """SIGHUP (systemctl reload) re-reads the config file and swaps the dispatch policy."""
    from daemon import config as config_mod
    from daemon.errors import ConfigError

    def reload() -> None:
        try:
            cfg = config_mod.load(path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running policy: %s", exc)
            return
        problems = core.reload_policy(cfg.dispatch.policy)
        if problems:
            log.error("reload refused, keeping the running policy: %s", problems)
        else:
            log.info("reloaded dispatch policy from %s", path)
        changed = _changed_sections(core.config, cfg)
        if changed:
            log.warning("%s changed in %s: a reload applies only [dispatch.policy]; restart "
                        "fabd (systemctl restart fabd) for the rest", ", ".join(changed), path)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
