"""Wire the daemon from its config: which components run, what warms up before READY, what stops how."""

from __future__ import annotations

import logging

from daemon.app import App
from daemon.config import FabdConfig
from daemon.http import HttpEndpoint

log = logging.getLogger("fabd.assemble")


def build(config: FabdConfig) -> App:
    """Return an App with every component the config asks for (nothing runs yet)."""
    app = App(config)
    if config.http.enabled:
        http = HttpEndpoint(app)
        app.add_component("http", http.run)
        app.http = http  # type: ignore[attr-defined]
    return app
