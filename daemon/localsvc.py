"""Private redis-server and mosquitto processes on free loopback ports.

The demo starts a Redis when none is reachable and its own Mosquitto for the
simulated sensors; the tests and benchmarks use the same classes so that they
never depend on services already running on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, proc: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout_s}s")


class _Server:
    """A child server process on a fixed port that can be stopped and restarted."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, cwd=self.workdir)
        _wait_port(self.port, 10.0, self.proc, self.name)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class RedisServer(_Server):
    name = "redis"

    def __init__(self, workdir: Path, password: str | None = None,
                 persist: bool = False) -> None:
        super().__init__(workdir)
        self.password = password
        self.persist = persist  # append-only file: streams survive a restart, as in production

    def argv(self) -> list[str]:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not installed: run `make test` (it installs it)")
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--dir", str(self.workdir), "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


class MosquittoServer(_Server):
    name = "mosquitto"

    def __init__(self, workdir: Path, username: str | None = None,
                 password: str | None = None) -> None:
        super().__init__(workdir)
        self.username = username
        self.password = password

    def argv(self) -> list[str]:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto not installed: run `make test` (it installs it)")
        conf = self.workdir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if os.geteuid() == 0:  # as root mosquitto drops to its own user, which cannot read our files
            lines.append("user root")
        if self.username:
            pwfile = self.workdir / "passwd"
            pwfile.write_text(f"{self.username}:{self.password}\n")
            subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True)
            os.chmod(pwfile, 0o600)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n")
        return [exe, "-c", str(conf)]
