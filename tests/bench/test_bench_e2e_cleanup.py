"""The e2e benchmark stops what it started (redis-server, the farm) even when it fails."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bench import e2e
from bench.common import standard_args
from daemon import assemble, localsvc


def test_a_failing_e2e_run_leaves_no_redis_server_or_farm_running(monkeypatch) -> None:
    servers: list[localsvc.RedisServer] = []
    children: list[asyncio.subprocess.Process] = []
    pids: list[int] = []

    class Recorded(localsvc.RedisServer):
        def start(self) -> None:
            super().start()
            servers.append(self)
            pids.append(self.proc.pid)

    real_exec = asyncio.create_subprocess_exec

    async def recorded_exec(*argv, **kw):
        proc = await real_exec(*argv, **kw)
        children.append(proc)
        return proc

    def broken_build(cfg):
        raise RuntimeError("assembly failed")

    monkeypatch.setattr(localsvc, "RedisServer", Recorded)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", recorded_exec)
    monkeypatch.setattr(assemble, "build", broken_build)
    args = standard_args("e2e", ["--tools", "2", "--seconds", "1"], e2e._extra)
    level_before = logging.getLogger("fabd.hsms").level
    with pytest.raises(RuntimeError, match="assembly failed"):
        asyncio.run(e2e._run(args))
    assert servers and children, "the bench did not get as far as starting redis and the farm"
    leftovers = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] != "Z":
                    leftovers.append(f"redis-server {pid}")
        except FileNotFoundError:
            pass
    for proc in children:
        if proc.returncode is None:
            leftovers.append(f"child {proc.pid}")
            proc.kill()
    for s in servers:
        s.stop()
    assert not leftovers
    # run in-process, it quiets some loggers for its duration only (later tests read them)
    assert logging.getLogger("fabd.hsms").level == level_before
    assert not any(s.workdir.exists() for s in servers), "the bench's temp dir was left behind"
