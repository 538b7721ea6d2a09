"""Run `fabd run` as a child process with a private config, NOTIFY_SOCKET and HTTP port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """A `fabd run` child with a systemd-like notify socket the test reads from."""

    def __init__(self, tmp: Path, extra_toml: str = "", watchdog_usec: int | None = None,
                 interval_s: float = 0.1) -> None:
        self.tmp = tmp
        self.http_port = free_port()
        self.config_path = tmp / "fabd.toml"
        self.config_path.write_text(
            f'[service]\nstate_directory = "{tmp}/state"\ncache_directory = "{tmp}/cache"\n'
            f'event_loop = "asyncio"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http_port}"\n'
            f'[tick]\ninterval_s = {interval_s}\n'
            # No Redis here unless the test brings one: a port nobody listens on.
            + (f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n'
               if "[redis]" not in extra_toml else "")
            + extra_toml)
        (tmp / "state").mkdir(exist_ok=True)
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.messages: list[str] = []
        self.watchdog_usec = watchdog_usec
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # NUMBA_CACHE_DIR stays as the test run has it, so kernels compile once per machine.
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        env.pop("JOURNAL_STREAM", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.log = open(self.tmp / "daemon.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config_path)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def read_notify(self, until: str, timeout_s: float = 60.0) -> list[str]:
        """Collect notify datagrams until one contains `until`; return all collected so far."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"daemon exited {self.proc.returncode}: {self.logtext()}") from None
                continue
            self.messages.extend(data.split("\n"))
            if until in data:
                return self.messages
        raise AssertionError(f"no {until} within {timeout_s}s; got {self.messages}")

    def http(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> tuple[int, float]:
        """Send a signal; return (exit code, seconds it took to exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout_s)
        return rc, time.monotonic() - t0

    def logtext(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
