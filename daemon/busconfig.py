"""Config of the integration bus: `[redis]`, `[store]` and `[bus]` sections of the daemon config.

Frozen msgspec Structs with units in the field names; every default is written
next to its field with the reason for it.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveSeconds = Annotated[float, Meta(gt=0)]


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach Redis: URL, credentials (never in the URL of a real config) and TLS."""

    url: str = "redis://127.0.0.1:6379/0"  # rediss:// for TLS
    username: str = ""  # ACL user; empty means the `default` user
    password_file: str = ""  # a file holding the password (systemd LoadCredential=); wins over env
    password_env: str = "FABD_REDIS_PASSWORD"  # env var holding the password when no file is given
    tls_ca_file: str = ""  # CA bundle to verify the server with rediss://; empty = system store
    tls_cert_file: str = ""  # client certificate for mutual TLS (optional)
    tls_key_file: str = ""
    connect_timeout_s: PositiveSeconds = 5.0
    command_timeout_s: PositiveSeconds = 10.0  # any single command; a hung Redis counts as down
    backoff_initial_s: PositiveSeconds = 0.2  # first reconnect delay, doubled up to the max
    backoff_max_s: PositiveSeconds = 5.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url: must start with redis://, rediss:// or unix://, got {self.url!r}")
        # Found here, a TLS file problem names its key at start; found at the first connect, it
        # looked like a Redis outage (retried for ever, the outbox growing) or, with redis://,
        # the files were ignored and the password went out in clear text.
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, key)
            if path and not self.url.startswith("rediss://"):
                raise ValueError(f"{key}: set, but url is not rediss://, so the connection would "
                                 f"not use TLS; use a rediss:// url or leave {key} empty")
            if path and not os.path.isfile(path):
                raise ValueError(f"{key}: no such file: {path}")
        if self.tls_key_file and not self.tls_cert_file:
            raise ValueError("tls_key_file: set without tls_cert_file")
        import ssl

        if self.tls_ca_file:
            try:
                ssl.create_default_context(cafile=self.tls_ca_file)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"tls_ca_file: cannot load CA certificates from "
                                 f"{self.tls_ca_file}: {exc}") from None
        if self.tls_cert_file:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    self.tls_cert_file, self.tls_key_file or None, password=lambda: b"")
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"tls_cert_file: cannot load {self.tls_cert_file} with the key "
                                 f"{self.tls_key_file or '(in the same file)'} (PEM, unencrypted,"
                                 f" matching): {exc}") from None


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The embedded SQLite store (WAL): state of record, event journal, outbox."""

    filename: str = "fabd.sqlite3"  # inside the service state directory
    # FULL: each group commit fsyncs the WAL, so an event acknowledged to a tool
    # (S6F12) survives a power cut, not only a process crash. Group commit makes
    # that one fsync per batch, not per event. NORMAL is faster and only risks the
    # last batches on power loss (never corruption); choose it on battery-backed disks.
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    commit_interval_ms: Annotated[float, Meta(ge=0, le=1000)] = 5.0  # group commit window
    commit_max_events: Annotated[int, Meta(ge=1)] = 20_000  # flush early when this many wait
    outbox_max_events: Annotated[int, Meta(ge=100)] = 2_000_000  # unsent events on disk (bound)
    outbox_warn_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.8  # loud log + metric above this
    journal_keep_events: Annotated[int, Meta(ge=0)] = 1_000_000  # sent events kept for audit/replay


class BusConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Streams, relay, ERP command intake and WIP snapshots."""

    prefix: str = "fab"  # streams are <prefix>:lots, :equipment, :quality, :wip, :erp:commands
    consumer_group: str = "fabd"  # group fabd reads <prefix>:erp:commands with
    consumer_name: str = "fabd-1"  # this daemon's consumer in the group (stable across restarts)
    stream_maxlen: Annotated[int, Meta(ge=1000)] = 1_000_000  # approximate MAXLEN (~) on XADD
    relay_batch_events: Annotated[int, Meta(ge=1, le=100_000)] = 2_000  # XADDs per pipeline
    relay_memory_events: Annotated[int, Meta(ge=1000)] = 200_000  # committed events kept in RAM
    erp_batch_commands: Annotated[int, Meta(ge=1)] = 100  # XREADGROUP COUNT
    erp_block_ms: Annotated[int, Meta(ge=1)] = 1_000  # XREADGROUP BLOCK
    erp_claim_idle_s: PositiveSeconds = 60.0  # XAUTOCLAIM entries another consumer left this long
    snapshot_interval_s: PositiveSeconds = 60.0  # WIP snapshot on <prefix>:wip
