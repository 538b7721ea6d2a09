"""`fabd run` under a systemd-like supervisor: READY, watchdog pings, graceful stop within budget."""

import contextlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon import config
from tests.daemon.daemon_proc import DaemonProcess

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "fabd.service"


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path, watchdog_usec=400_000)
    yield d
    d.close()


def test_ready_then_watchdog_pings_then_stopping_and_clean_exit(daemon):
    daemon.start()
    msgs = daemon.read_notify("READY=1")
    status, _ = daemon.http("/healthz")
    assert status == 200
    # `fabd status` reads the same daemon and prints a table a shift lead can read
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--url",
                          f"http://127.0.0.1:{daemon.http_port}"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "health: ok" in out.stdout and "components:" in out.stdout
    # WATCHDOG=1 comes from the tick loop, repeatedly.
    for _ in range(3):
        daemon.messages.clear()
        daemon.read_notify("WATCHDOG=1", timeout_s=5)
    rc, took_s = daemon.terminate(signal.SIGTERM)
    msgs = daemon.read_notify("STOPPING=1", timeout_s=5)
    assert "STOPPING=1" in msgs
    assert rc == 0, daemon.logtext()
    budget = config.load(daemon.config_path).service.stop_budget_total_s
    assert took_s < budget
    assert "fabd stopped cleanly" in daemon.logtext()


def test_sigint_stops_cleanly_too(daemon):
    daemon.start()
    daemon.read_notify("READY=1")
    rc, _ = daemon.terminate(signal.SIGINT)
    assert rc == 0, daemon.logtext()


def test_stop_budgets_fit_inside_the_units_timeout_stop_sec():
    timeout_stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.M).group(1))
    defaults = config.loads("").service
    assert defaults.stop_budget_total_s < timeout_stop_s
    watchdog_s = int(re.search(r"^WatchdogSec=(\d+)$", UNIT.read_text(), re.M).group(1))
    # The tick pings every interval; the watchdog must allow several missed ticks.
    assert watchdog_s >= 5 * config.loads("").tick.interval_s


def test_a_tick_the_watchdog_cannot_wait_for_is_refused_at_start(tmp_path):
    # WATCHDOG=1 follows each tick: with [tick] interval_s at or above half of WatchdogSec,
    # one slow tick (or every tick, at or above it) gets fabd killed by systemd.
    d = DaemonProcess(tmp_path, watchdog_usec=1_000_000, interval_s=0.5)
    d.start()
    try:
        rc = d.proc.wait(60)
        sent = []
        with contextlib.suppress(TimeoutError):
            while True:
                sent += d.notify.recv(4096).decode().split("\n")
    finally:
        d.close()
    assert rc == 2, d.logtext()
    assert "tick.interval_s" in d.logtext() and "READY=1" not in sent


def test_readyz_says_whether_redis_answers_now(tmp_path, own_redis):
    """/readyz used to report Redis reachable whatever it was (the relay has no such state);
    it PINGs Redis now, so a Redis that went away while fabd was idle shows up."""
    d = DaemonProcess(tmp_path, extra_toml=f'[redis]\nurl = "{own_redis.url}"\n')
    d.start()
    try:
        d.read_notify("READY=1")
        status, body = d.http("/readyz")
        assert status == 200 and b'"redis": true' in body, body
        own_redis.stop()
        status, body = d.http("/readyz")
        assert status == 503 and b'"redis": false' in body, body
        own_redis.start()
        status, body = d.http("/readyz")
        assert status == 200 and b'"redis": true' in body, body
    finally:
        d.close()


def test_sighup_reloads_the_policy_and_names_what_needs_a_restart(daemon):
    """systemctl reload: the new [dispatch.policy] is taken; a changed [tick] is not, and
    the log says so, naming the section and the restart; a broken file is refused and the
    daemon runs on."""
    daemon.start()
    daemon.read_notify("READY=1")
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(
        text.replace("interval_s = 0.1", "interval_s = 0.2")
        + '[dispatch.policy]\npreset = "deliver"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "restart fabd" not in daemon.logtext() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = daemon.logtext()
    assert "reloaded dispatch policy" in log
    assert re.search(r"\[tick\] changed in .*restart fabd", log), log
    daemon.config_path.write_text("[tick\nbroken")
    daemon.proc.send_signal(signal.SIGHUP)
    while "reload refused" not in daemon.logtext() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reload refused" in daemon.logtext()
    assert daemon.http("/healthz")[0] == 200
    rc, _ = daemon.terminate(signal.SIGTERM)
    assert rc == 0, daemon.logtext()
