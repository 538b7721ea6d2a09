"""fabd configuration: TOML decoded into frozen msgspec Structs, validated before anything starts.

Every section is a frozen Struct with units in its field names. `load()`
collects *every* problem (unknown keys, wrong types, out-of-range values,
missing required keys) with its dotted key path, instead of stopping at the
first one, so an engineer fixes a file in one pass. Defaults are documented in
`systemd/fabd.example.toml`.
"""

from __future__ import annotations

import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from daemon.busconfig import BusConfig, RedisConfig, StoreConfig
from daemon.errors import ConfigError
from dispatch.config import Policy
from equipment.gem.config import GemToolConfig
from equipment.mqtt.config import MqttBrokerConfig
from equipment.opcua.config import OpcUaToolConfig
from spc.config import SpcConfig

PositiveSeconds = Annotated[float, Meta(gt=0)]

# TimeoutStopSec= of systemd/fabd.service: after it systemd SIGKILLs a stop in progress.
UNIT_TIMEOUT_STOP_S = 30.0
# WatchdogSec= of systemd/fabd.service: WATCHDOG=1 follows each tick (App.run checks the real one).
UNIT_WATCHDOG_S = 15.0


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the daemon keeps its files and how it runs."""

    state_directory: str = "/var/lib/fabd"  # systemd StateDirectory=; the SQLite store lives here
    cache_directory: str = "/var/cache/fabd"  # systemd CacheDirectory=; numba's compiled kernels
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Graceful stop: each phase has a budget; their sum must stay below the unit's
    # TimeoutStopSec (30 s) so systemd never has to SIGKILL a clean stop.
    stop_intake_budget_s: PositiveSeconds = 2.0  # stop taking ERP commands and tool events
    stop_flush_budget_s: PositiveSeconds = 8.0  # commit state, drain the outbox to Redis
    stop_sessions_budget_s: PositiveSeconds = 5.0  # separate equipment sessions politely
    component_restart_max_backoff_s: PositiveSeconds = 30.0

    @property
    def stop_budget_total_s(self) -> float:
        return self.stop_intake_budget_s + self.stop_flush_budget_s + self.stop_sessions_budget_s


class HttpConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP endpoint for Prometheus (/metrics), health (/healthz, /readyz) and `fabd status`."""

    enabled: bool = True
    listen: str = "127.0.0.1:9464"  # HOST:PORT; loopback by default, put a proxy in front to expose

    def __post_init__(self) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen: must be HOST:PORT, got {self.listen!r}")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class TickConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The periodic loop that runs SPC, holds, dispatch and commands."""

    interval_s: Annotated[float, Meta(ge=0.05, le=60)] = 1.0
    stale_after_intervals: Annotated[int, Meta(ge=2)] = 5  # /healthz fails when the tick is this late


Mode = Literal["auto", "advisory"]


class DispatchSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the dispatcher does with its lists, and the policy it ranks lots by."""

    # auto: fabd verifies the recipe, enforces, and starts the chosen lot (PP-SELECT + START);
    # advisory: fabd publishes the dispatch list for operators and the AMHS, and starts nothing.
    mode: Mode = "advisory"
    group_modes: dict[str, Mode] = {}  # per tool group, e.g. { ETCH = "auto" }
    publish_lists: bool = True  # advisory lists go to <prefix>:equipment as dispatch_list events
    recipe_directory: str = ""  # approved recipe bodies as <recipe_id>.v<version>; "" = none
    download_missing_recipes: bool = True  # S7F3 the approved body when the tool lacks it
    command_timeout_s: PositiveSeconds = 10.0  # S2F41 / S7 exchanges before giving up on a tool
    policy: Policy = Policy()  # ranking rules and weights (reloaded on SIGHUP)


class EquipmentSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every tool fabd talks to, by protocol."""

    hsms: list[GemToolConfig] = []  # SECS/GEM tools: one HSMS host session each
    opcua: list[OpcUaToolConfig] = []  # OPC UA tools
    mqtt: list[MqttBrokerConfig] = []  # MQTT brokers (sensors, gateways)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for t in [*self.hsms, *self.opcua]:
            if t.tool_id in seen:
                raise ValueError(f"tool id {t.tool_id!r} appears twice (hsms and opcua tools "
                                 "share one namespace)")
            seen.add(t.tool_id)
        endpoints: dict[tuple[str, int], str] = {}
        for t in self.hsms:
            # E37 HSMS-SS: one session per equipment port. A second tool id on the same address
            # (a copied block, a port left at its default) is refused by the tool or, through a
            # gateway, gets the same tool's events under two tool ids.
            other = endpoints.setdefault((t.hsms.host, t.hsms.port), t.tool_id)
            if other != t.tool_id:
                raise ValueError(f"hsms: tools {other!r} and {t.tool_id!r} both connect to "
                                 f"{t.hsms.host}:{t.hsms.port} (HSMS-SS is one session per "
                                 "port); give each tool its own hsms.host and hsms.port")
        brokers: set[str] = set()
        for b in self.mqtt:
            if b.broker_id in brokers:
                # two sessions would share a component name and their metrics' labels
                raise ValueError(f"mqtt: broker_id {b.broker_id!r} appears twice")
            brokers.add(b.broker_id)


class FabdConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration file."""

    service: ServiceConfig = ServiceConfig()
    http: HttpConfig = HttpConfig()
    tick: TickConfig = TickConfig()
    redis: RedisConfig = RedisConfig()
    store: StoreConfig = StoreConfig()
    bus: BusConfig = BusConfig()
    spc: SpcConfig = SpcConfig()
    dispatch: DispatchSection = DispatchSection()
    equipment: EquipmentSection = EquipmentSection()


def load(path: str | Path) -> FabdConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("(file)", f"no such file: {p}; pass --config PATH")], str(p)) from None
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {p}: {exc.strerror}")], str(p)) from None
    return loads(text, source=str(p))


def loads(text: str, source: str = "<config>") -> FabdConfig:
    """Validate TOML text; raise ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("(toml)", f"not valid TOML: {exc}")], source) from None
    problems = check(raw, FabdConfig)
    if problems:
        raise ConfigError(problems, source)
    try:
        cfg = msgspec.convert(raw, FabdConfig)
    except msgspec.ValidationError as exc:  # a cross-field check the walk did not see
        raise ConfigError([_split_msgspec_error(str(exc))], source) from None
    problems = _semantic_checks(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _semantic_checks(cfg: FabdConfig) -> list[tuple[str, str]]:
    """Checks that need more than one section or another package's validator."""
    from dispatch.config import load_policy
    from dispatch.errors import PolicyError

    problems: list[tuple[str, str]] = []
    svc = cfg.service
    if svc.stop_budget_total_s >= UNIT_TIMEOUT_STOP_S:
        problems.append(("service", "stop_intake_budget_s + stop_flush_budget_s + "
                         f"stop_sessions_budget_s = {svc.stop_budget_total_s:g} s, must stay below"
                         f" the unit's TimeoutStopSec ({UNIT_TIMEOUT_STOP_S:g} s), or systemd"
                         " kills the stop before the outbox is drained and the store closed"))
    if 2 * cfg.tick.interval_s >= UNIT_WATCHDOG_S:
        # fabd run under the unit refuses this (exit 2); check-config says so beforehand
        problems.append(("tick.interval_s",
                         f"{cfg.tick.interval_s:g} s must be below half the unit's WatchdogSec"
                         f" ({UNIT_WATCHDOG_S:g} s): the watchdog ping follows each tick, so one"
                         " late tick would get fabd killed by systemd"))
    try:
        load_policy(cfg.dispatch.policy)
    except PolicyError as exc:
        problems += [(_join("dispatch.policy", p) if p else "dispatch.policy", r)
                     for p, r in exc.problems]
    if cfg.bus.erp_block_ms >= cfg.redis.command_timeout_s * 1000.0:
        # the blocking XREADGROUP would outlast the socket timeout: every read fails and the
        # ERP intake looks like a Redis outage for ever
        problems.append(("bus.erp_block_ms",
                         f"must be below redis.command_timeout_s ({cfg.redis.command_timeout_s:g} s"
                         f" = {cfg.redis.command_timeout_s * 1000:g} ms), or every ERP read times out"))
    if cfg.dispatch.recipe_directory and not Path(cfg.dispatch.recipe_directory).is_dir():
        problems.append(("dispatch.recipe_directory",
                         f"not a directory: {cfg.dispatch.recipe_directory}"))
    return problems


def check(raw: Any, struct_type: type, path: str = "") -> list[tuple[str, str]]:
    """Return every (key path, reason) problem of `raw` against a Struct type."""
    if not isinstance(raw, dict):
        return [(path or "(root)", f"expected a table, got {_kind(raw)}")]
    problems: list[tuple[str, str]] = []
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct_type)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            problems.append((_join(path, key), f"unknown key (known keys here: {known})"))
    field_problems: list[tuple[str, str]] = []
    for name, field in fields.items():
        where = _join(path, name)
        if name not in raw:
            if field.required:
                field_problems.append((where, "missing required key"))
            continue
        field_problems.extend(_check_value(raw[name], field.type, where))
    problems.extend(field_problems)
    if not field_problems:  # fields are fine one by one: now the Struct's own cross-field checks
        try:
            msgspec.convert({k: v for k, v in raw.items() if k in fields}, struct_type)
        except msgspec.ValidationError as exc:
            inner_path, reason = _split_msgspec_error(str(exc))
            field, colon, rest = reason.partition(": ")
            if colon and field in fields:  # __post_init__ names its field: "listen: must be ..."
                problems.append((_join(path, field), rest))
            else:
                problems.append((path or inner_path, reason))
    return problems


def _check_value(value: Any, tp: Any, where: str) -> list[tuple[str, str]]:
    base, _ = _strip_annotated(tp)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return check(value, base, where)
    origin = typing.get_origin(base)
    args = typing.get_args(base)
    variadic_tuple = origin is tuple and len(args) == 2 and args[1] is Ellipsis
    if (origin is list or variadic_tuple) and isinstance(value, list):
        # tuple[X, ...] too ([[spc.overrides]]): its tables need the same walk as a list's
        item_tp = args[0] if args else Any
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            out.extend(_check_value(item, item_tp, f"{where}[{i}]"))
        return out
    if origin is dict and isinstance(value, dict):
        _, val_tp = typing.get_args(base) or (str, Any)
        out = []
        for k, item in value.items():
            out.extend(_check_value(item, val_tp, _join(where, str(k))))
        return out
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(base)
        structs = [o for o in options if _is_struct(o)]
        if isinstance(value, dict) and len(structs) == 1:
            # `tls: MqttTls | None`: a table is that Struct, so walk it for unknown keys; the
            # convert below would take a Struct without forbid_unknown_fields, typos and all
            return _check_value(value, structs[0], where)
        for option in options:
            if not _check_value(value, option, where):
                return []
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        return [(where, _split_msgspec_error(str(exc))[1])]
    return []


def _is_struct(tp: Any) -> bool:
    base, _ = _strip_annotated(tp)
    return isinstance(base, type) and issubclass(base, msgspec.Struct)


def _strip_annotated(tp: Any) -> tuple[Any, tuple]:
    if typing.get_origin(tp) is Annotated:
        args = typing.get_args(tp)
        return args[0], args[1:]
    return tp, ()


def _split_msgspec_error(msg: str) -> tuple[str, str]:
    # msgspec: "Expected `int`, got `str` - at `$.service.x`"
    reason, sep, at = msg.partition(" - at `")
    path = at.rstrip("`").removeprefix("$").lstrip(".") if sep else "(root)"
    return path or "(root)", reason


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array"}.get(type(value), type(value).__name__)
