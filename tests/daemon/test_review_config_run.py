"""Review of what an engineer deploying fabd under systemd meets: config typos, start-up refusals."""

import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def fabd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_a_typo_inside_an_optional_table_is_refused_with_its_key(tmp_path):
    # [equipment.mqtt.tls] is `MqttTls | None`: a misspelt ca_file was accepted and the broker
    # was then verified against the system CAs instead of the plant's CA.
    path = tmp_path / "fabd.toml"
    path.write_text('[[equipment.mqtt]]\nbroker_id = "plant"\n'
                    '[equipment.mqtt.tls]\nca_fil = "/etc/fabd/plant-ca.pem"\n')
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert "equipment.mqtt[0].tls.ca_fil: unknown key (known keys here: ca_file," in result.stderr


def test_a_typo_in_an_opcua_recipes_table_is_named_not_only_the_missing_key():
    text = ('[[equipment.opcua]]\ntool_id = "T1"\nendpoint_url = "opc.tcp://127.0.0.1:4840"\n'
            '[equipment.opcua.recipes]\nobject_node = "ns=2;s=Recipes"\n'
            'download_methd = "ns=2;s=Download"\n')
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert [p for p, _ in info.value.problems] == ["equipment.opcua[0].recipes.download_methd"]


def test_run_refuses_a_state_directory_it_cannot_write_with_exit_2_and_the_key(tmp_path):
    # Under ProtectSystem=strict any state_directory outside StateDirectory= is read-only: the
    # store warm-up crashed with a traceback and exit 1, so Restart=on-failure retried for ever.
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "fabd.toml"
    path.write_text(f'[service]\nstate_directory = "{tmp_path}/a-file/state"\n'
                    f'cache_directory = "{tmp_path}/cache"\n[http]\nenabled = false\n')
    result = fabd("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert f"{path}: service.state_directory: cannot write to {tmp_path}/a-file/state" \
        in result.stderr
    assert "ReadWritePaths=" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_hsms_tools_on_one_address_are_refused_naming_both(tmp_path):
    # A copied [[equipment.hsms]] block whose port was not changed: HSMS-SS takes one session
    # per port, so one of the two tools never came up (or both got the same tool's events).
    path = tmp_path / "fabd.toml"
    path.write_text("".join(f'[[equipment.hsms]]\ntool_id = "{t}"\n'
                            f'[equipment.hsms.hsms]\nhost = "10.1.2.3"\nport = {p}\n'
                            for t, p in (("ETCH01", 5000), ("ETCH02", 5001), ("ETCH03", 5000))))
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert ("equipment.hsms: tools 'ETCH01' and 'ETCH03' both connect to 10.1.2.3:5000"
            in result.stderr), result.stderr


def test_a_typo_in_an_spc_override_is_refused_not_left_at_the_default(tmp_path):
    # [[spc.overrides]] is a tuple of tables, which the key walk skipped: k1_sigm = 2 was
    # accepted and the ETCH charts kept 3-sigma limits the engineer meant to tighten.
    path = tmp_path / "fabd.toml"
    path.write_text('[[spc.overrides]]\npattern = "ETCH*/*/rf_power"\n'
                    '[spc.overrides.spec.k]\nk1_sigm = 2.0\n')
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert "spc.overrides[0].spec.k.k1_sigm: unknown key (known keys here: k1_sigma," \
        in result.stderr, result.stderr


def test_a_cache_directory_the_environment_overrides_is_named_in_the_log(tmp_path):
    # The unit sets NUMBA_CACHE_DIR=/var/cache/fabd/numba, which wins over [service]
    # cache_directory: a changed cache_directory was ignored without a word.
    import os

    (tmp_path / "state").mkdir()
    path = tmp_path / "fabd.toml"
    path.write_text(f'[service]\nstate_directory = "{tmp_path}/state"\n'
                    f'cache_directory = "{tmp_path}/fast-disk"\nevent_loop = "asyncio"\n'
                    '[http]\nenabled = false\n[tick]\ninterval_s = 1.0\n')
    env_cache = os.environ.get("NUMBA_CACHE_DIR") or str(tmp_path / "env-cache")
    # a watchdog the 1 s tick cannot serve: fabd refuses to start right after the warm-up
    env = dict(os.environ, NUMBA_CACHE_DIR=env_cache, WATCHDOG_USEC="1000000")
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    result = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(path)],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert (f"service.cache_directory = {tmp_path}/fast-disk is not used: the environment's "
            f"NUMBA_CACHE_DIR={env_cache} wins") in result.stderr, result.stderr


def test_check_config_refuses_a_tick_the_units_watchdog_would_refuse(tmp_path):
    # check-config said ok to interval_s = 10, and fabd run under the unit (WatchdogSec=15)
    # then refused to start with exit 2: the check before a restart must say it first.
    import re

    watchdog_s = float(re.search(r"^WatchdogSec=(\d+)$",
                                 (ROOT / "systemd" / "fabd.service").read_text(), re.M).group(1))
    path = tmp_path / "fabd.toml"
    path.write_text(f"[tick]\ninterval_s = {watchdog_s / 2:g}\n")
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert (f"tick.interval_s: {watchdog_s / 2:g} s must be below half the unit's WatchdogSec "
            f"({watchdog_s:g} s)") in result.stderr, result.stderr
    path.write_text(f"[tick]\ninterval_s = {watchdog_s / 2 - 0.5:g}\n")
    assert fabd("check-config", str(path)).returncode == 0


@pytest.mark.parametrize("url,ca,expect", [
    # a CA path that is not there: every connect failed and it looked like a Redis outage
    ("rediss://10.0.0.9:6380/0", "{tmp}/redis-ca.pem",
     "redis.tls_ca_file: no such file: {tmp}/redis-ca.pem"),
    # TLS files with a plain redis:// url were ignored: the password went out in clear text
    ("redis://10.0.0.9:6379/0", "{tmp}/fabd.toml",
     "redis.tls_ca_file: set, but url is not rediss://"),
    ("rediss://10.0.0.9:6380/0", "{tmp}/fabd.toml",
     "redis.tls_ca_file: cannot load CA certificates from {tmp}/fabd.toml"),
])
def test_redis_tls_files_that_cannot_work_are_refused_at_start(tmp_path, url, ca, expect):
    path = tmp_path / "fabd.toml"
    path.write_text(f'[redis]\nurl = "{url}"\ntls_ca_file = "{ca.format(tmp=tmp_path)}"\n')
    result = fabd("check-config", str(path))
    assert result.returncode == 2, result.stdout
    assert expect.format(tmp=tmp_path) in result.stderr, result.stderr
