"""Config: every problem reported with its key path, exit code 2, never a traceback."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config
from daemon.errors import ConfigError
from tests.daemon.daemon_proc import DaemonProcess
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "systemd" / "fabd.example.toml"


def fabd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_example_config_is_valid_and_equals_the_defaults():
    cfg = config.load(EXAMPLE)
    # The example documents the defaults: loading it must give what an empty file gives
    # (apart from keys the example sets for a reason, none today).
    assert cfg == config.loads("")


def test_every_error_is_listed_with_its_key_path():
    text = """
[service]
bogus = 1
stop_flush_budget_s = "eight"
event_loop = "tokio"
[http]
listen = "no-port"
[tick]
interval_s = 0
[extra]
"""
    with pytest.raises(ConfigError) as info:
        config.loads(text, source="f.toml")
    paths = [p for p, _ in info.value.problems]
    assert sorted(paths) == sorted(["extra", "service.bogus", "service.event_loop",
                                    "service.stop_flush_budget_s", "http.listen",
                                    "tick.interval_s"])
    text_out = str(info.value)
    assert "f.toml: service.bogus: unknown key" in text_out
    assert "f.toml: tick.interval_s: Expected `float` >= 0.05" in text_out


@pytest.mark.parametrize("content,expect", [
    ("[service]\nlog_level = 3\n", "service.log_level: Expected `str`, got `int`"),
    ("[nope]\n", "nope: unknown key"),
    ("[service\n", "(toml): not valid TOML"),
    ("[http]\nlisten = \"127.0.0.1:99999\"\n", "http.listen: must be HOST:PORT"),
    ("[[equipment.mqtt]]\nbroker_id = \"plant\"\n[[equipment.mqtt]]\nbroker_id = \"plant\"\n",
     "equipment.mqtt: broker_id 'plant' appears twice"),
    ("[bus]\nerp_block_ms = 15000\n",
     "bus.erp_block_ms: must be below redis.command_timeout_s (10 s = 10000 ms)"),
])
def test_check_config_cli_gives_one_line_per_error_and_exit_2(tmp_path, content, expect):
    path = tmp_path / "fabd.toml"
    path.write_text(content)
    result = fabd("check-config", str(path))
    assert result.returncode == 2
    assert expect in result.stderr
    assert "Traceback" not in result.stderr
    assert all(line.startswith(str(path)) for line in result.stderr.strip().splitlines())


def test_missing_file_is_a_clear_error(tmp_path):
    result = fabd("check-config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


def test_run_with_broken_config_exits_2_without_traceback(tmp_path):
    path = tmp_path / "fabd.toml"
    path.write_text("[tick]\ninterval_s = \"fast\"\n")
    result = fabd("run", "--config", str(path))
    assert result.returncode == 2
    assert "tick.interval_s" in result.stderr and "Traceback" not in result.stderr


def test_help_documents_the_commands():
    out = fabd("--help").stdout
    for cmd in ("run", "check-config", "demo", "schema", "status"):
        assert cmd in out
    run_help = fabd("run", "--help").stdout
    assert "--config" in run_help


def test_run_with_a_password_file_it_cannot_read_exits_2_with_the_key(tmp_path):
    # Only found when the Redis clients connect, after READY; restarting the component
    # cannot fix it, and systemd must not restart the daemon for it either (exit 2).
    absent = tmp_path / "absent.password"
    d = DaemonProcess(tmp_path, extra_toml=(f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n'
                                            f'password_file = "{absent}"\n'))
    d.start()
    try:
        rc = d.proc.wait(60)
    finally:
        d.close()
    assert rc == 2, d.logtext()
    assert "redis.password_file: cannot read" in d.logtext()


def test_stop_budgets_that_outlast_the_units_timeout_stop_sec_are_refused(tmp_path):
    # systemd SIGKILLs a stop that takes TimeoutStopSec: the flush and the store close
    # would be cut short. The budgets must sum below it (README, [service]).
    unit = (ROOT / "systemd" / "fabd.service").read_text()
    timeout_stop_s = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    path = tmp_path / "fabd.toml"
    path.write_text(f"[service]\nstop_intake_budget_s = 2.0\nstop_sessions_budget_s = 5.0\n"
                    f"stop_flush_budget_s = {timeout_stop_s - 7}.0\n")
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert (f"{path}: service: stop_intake_budget_s + stop_flush_budget_s + "
            f"stop_sessions_budget_s = {timeout_stop_s} s") in result.stderr
    assert f"TimeoutStopSec ({timeout_stop_s} s)" in result.stderr
    path.write_text(f"[service]\nstop_flush_budget_s = {timeout_stop_s - 7.5}\n")
    assert fabd("check-config", str(path)).returncode == 0


def test_check_config_does_not_fail_on_what_only_the_service_has(tmp_path):
    """An engineer checking the config from a shell got exit 2 for every password kept the
    way the example recommends (LoadCredential=, EnvironmentFile=): only the service has
    them. They are now named as not checked; a real error still fails."""
    broker = ('[[equipment.mqtt]]\nbroker_id = "plant"\nusername = "fabd"\n'
              'password_env = "FABD_TEST_UNSET_PW"\n'
              '[[equipment.opcua]]\ntool_id = "CVD02"\nendpoint_url = "opc.tcp://10.0.0.2:4840"\n'
              '[equipment.opcua.security]\nusername = "fabd"\n'
              'password_file = "/run/credentials/fabd.service/opcua-pw"\n')
    path = tmp_path / "fabd.toml"
    path.write_text(broker)
    result = fabd("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert "equipment.mqtt[0].password_env: environment variable FABD_TEST_UNSET_PW is not " \
           "set here; not checked: only the service has it" in result.stdout
    assert "opcua-pw" in result.stdout and f"{path}: ok" in result.stdout
    path.write_text(broker + "[tick]\ninterval_s = 0\n")
    result = fabd("check-config", str(path))
    assert result.returncode == 2 and "tick.interval_s" in result.stderr
    assert "password_env" not in result.stderr
