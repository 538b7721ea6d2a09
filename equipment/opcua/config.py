"""OPC UA tool profiles: which node means what, how to connect, how to command.

Node ids use the OPC UA string syntax (`ns=2;s=Tool1.State`, `ns=3;i=1042`).
A profile is validated when it is built or decoded (`__post_init__`, "key: reason",
which daemon.config maps back to the key path), so a bad node id, a missing
certificate file or an unset password variable fails at start, never later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from equipment.events import ControlState, E10State, RemoteCommand
from equipment.opcua.errors import OpcUaConfigError


def _raise_first(problems: list[tuple[str, str]]) -> None:
    # "key: reason" is what daemon.config maps back to the key path of the config file.
    if problems:
        key, reason = problems[0]
        raise OpcUaConfigError(f"{key}: {reason}")


class OpcUaSecurity(msgspec.Struct, frozen=True, kw_only=True):
    """Secure channel and user identity for one endpoint."""

    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    client_cert_file: str = ""  # our application instance certificate (DER or PEM)
    client_key_file: str = ""  # its private key (PEM)
    client_key_password_env: str = ""  # env var holding the key's pass phrase, if it has one
    application_uri: str = ""  # "" = the URI in client_cert_file's SubjectAltName
    server_cert_file: str = ""  # trust exactly this server certificate (pinning)
    trusted_certs_dir: str = ""  # or: trust server certs (or their CAs) found in this directory
    username: str = ""  # "" = anonymous
    password_file: str = ""  # the password is read from this file (first line) ...
    password_env: str = ""  # ... or this environment variable; never from the config itself

    def __post_init__(self) -> None:
        _raise_first(self.problems())

    def problems(self) -> list[tuple[str, str]]:
        """Return (key, reason) for everything in this block that cannot work."""
        out: list[tuple[str, str]] = []
        if (self.policy == "None") != (self.mode == "None"):
            out.append(("mode", f"policy {self.policy!r} needs a matching mode "
                                f"(got {self.mode!r})"))
        if self.policy != "None":
            for key in ("client_cert_file", "client_key_file"):
                if not getattr(self, key):
                    out.append((key, f"required for {self.policy}"))
            if not self.server_cert_file and not self.trusted_certs_dir:
                out.append(("server_cert_file", "set server_cert_file or trusted_certs_dir "
                                                "(which server do we trust?)"))
        for key in ("client_cert_file", "client_key_file", "server_cert_file", "password_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                out.append((key, f"no such file: {path}"))
        if not out:
            out += self._unloadable()
        if self.trusted_certs_dir and not Path(self.trusted_certs_dir).is_dir():
            out.append(("trusted_certs_dir", f"no such directory: {self.trusted_certs_dir}"))
        if self.username and not (self.password_file or self.password_env):
            out.append(("username", "set password_file or password_env as well"))
        for key in ("password_env", "client_key_password_env"):
            name = getattr(self, key)
            if name and name not in os.environ:
                out.append((key, f"environment variable {name} is not set"))
        return out

    def password(self) -> str | None:
        """Read the password from its file or environment variable (never logged)."""
        if self.password_file:
            lines = Path(self.password_file).read_text().splitlines()
            return lines[0] if lines else ""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise OpcUaConfigError(f"security.password_env: {self.password_env} is not set")
            return value
        return None

    def _unloadable(self) -> list[tuple[str, str]]:
        # Read the files as the client will (asyncua: a name ending in .pem is PEM, any
        # other DER), so a file that exists but cannot be read fails here, naming its key.
        out: list[tuple[str, str]] = []
        for key in ("client_cert_file", "server_cert_file"):
            path = getattr(self, key)
            if not path:
                continue
            pem = Path(path).suffix.lower() == ".pem"
            try:
                data = Path(path).read_bytes()
                if pem:
                    x509.load_pem_x509_certificate(data)
                else:
                    x509.load_der_x509_certificate(data)
            except (OSError, ValueError) as exc:
                out.append((key, f"cannot read {path} as a {'PEM' if pem else 'DER'} "
                                 f"certificate (a name ending in .pem is read as PEM, any "
                                 f"other as DER): {exc}"))
        path = self.client_key_file
        if path:
            pem = Path(path).suffix.lower() == ".pem"
            env = self.client_key_password_env
            phrase = os.environ.get(env, "").encode() if env else None
            try:
                data = Path(path).read_bytes()
                if pem:
                    serialization.load_pem_private_key(data, password=phrase)
                else:
                    serialization.load_der_private_key(data, password=phrase)
            except (OSError, ValueError, TypeError) as exc:  # TypeError: pass phrase needed
                kind = "PEM" if pem else "DER"
                out.append(("client_key_file", f"cannot read {path} as a {kind} private key "
                                               "(a name ending in .pem is read as PEM, any "
                                               f"other as DER): {exc}"))
        return out


class AlarmNode(msgspec.Struct, frozen=True, kw_only=True):
    """An alarm variable: a boolean (True = set) for one ALID, or an integer alarm code."""

    node_id: str
    kind: Literal["bool", "code"] = "bool"  # "code": the value is the active ALID, 0 = none
    alid: int = 0  # for kind "bool"
    text: str = ""


class ParameterNode(msgspec.Struct, frozen=True, kw_only=True):
    """A process parameter variable that feeds SPC (one chart key per tool and parameter)."""

    node_id: str
    parameter: str
    chamber: str = ""


class CommandMethod(msgspec.Struct, frozen=True, kw_only=True):
    """The OPC UA method that carries one remote command."""

    object_node: str  # the object the method is called on
    method_node: str
    args: list[str] = []  # command parameter names (CPNAMEs), in the method's argument order
    timeout_s: float = 10.0


class RecipeMethods(msgspec.Struct, frozen=True, kw_only=True):
    """How the tool exposes recipes: a string-array variable and upload/download methods."""

    object_node: str
    list_node: str = ""  # String[] variable of PPIDs
    upload_method: str = ""  # (ppid: String) -> ByteString
    download_method: str = ""  # (ppid: String, body: ByteString) -> Boolean


class OpcUaToolConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One OPC UA tool: endpoint, security, and the node profile."""

    tool_id: str
    endpoint_url: str  # opc.tcp://host:port/path
    security: OpcUaSecurity = OpcUaSecurity()
    e10_state_node: str = ""
    # value (as text) -> E10 state; empty = the value is the E10State name itself
    e10_state_values: dict[str, E10State] = {}
    control_state_node: str = ""  # GEM-like control state (remote commands need online_remote)
    # value (as text) -> control state; empty = the value is the ControlState name itself
    control_state_values: dict[str, ControlState] = {}
    lot_id_node: str = ""  # non-empty value = that lot is in process; empty = idle
    recipe_node: str = ""  # the selected / running recipe (PPID)
    alarms: list[AlarmNode] = []
    parameters: list[ParameterNode] = []
    # With a lot_id_node, parameters feed SPC only while a lot is in process; True: always.
    idle_points: bool = False
    status_nodes: dict[str, str] = {}  # name -> node id; latest values in session.status
    commands: dict[str, CommandMethod] = {}  # RemoteCommand value ("START", ...) -> method
    recipes: RecipeMethods | None = None
    publishing_interval_ms: float = 100.0  # subscription publishing interval
    sampling_interval_ms: float = 0.0  # monitored item sampling; 0 = as fast as the server can
    queue_size: int = 10  # per monitored item, so fast parameters are not sampled away
    request_timeout_s: float = 5.0
    watchdog_interval_s: float = 2.0  # how often the session checks the server is alive
    # How long the server keeps our session (and its subscription, sampling every node) after
    # the link drops: fabd cannot close it then and opens a new one, so each drop leaves one
    # behind for this long, taking a session slot on the tool (asyncua asks for an hour).
    session_timeout_s: float = 60.0
    reconnect_min_s: float = 0.5  # backoff floor
    reconnect_max_s: float = 30.0  # backoff cap (jittered exponential in between)

    def __post_init__(self) -> None:
        _raise_first(self.problems())

    def validate(self) -> None:
        """Raise OpcUaConfigError naming the first bad key (as construction does)."""
        _raise_first(self.problems())

    def problems(self) -> list[tuple[str, str]]:
        """Return (key path, reason) for everything in this profile that cannot work."""
        out: list[tuple[str, str]] = []
        if not self.tool_id:
            out.append(("tool_id", "required"))
        if not self.endpoint_url.startswith("opc.tcp://"):
            out.append(("endpoint_url", f"must start with opc.tcp:// (got {self.endpoint_url!r})"))
        out += [(f"security.{k}", r) for k, r in self.security.problems()]
        nodes = [("e10_state_node", self.e10_state_node), ("lot_id_node", self.lot_id_node),
                 ("recipe_node", self.recipe_node), ("control_state_node", self.control_state_node)]
        nodes += [(f"alarms[{i}].node_id", a.node_id) for i, a in enumerate(self.alarms)]
        nodes += [(f"parameters[{i}].node_id", p.node_id) for i, p in enumerate(self.parameters)]
        nodes += [(f"status_nodes.{k}", v) for k, v in self.status_nodes.items()]
        for name, m in self.commands.items():
            nodes += [(f"commands.{name}.object_node", m.object_node),
                      (f"commands.{name}.method_node", m.method_node)]
        if self.recipes is not None:
            nodes += [(f"recipes.{k}", getattr(self.recipes, k)) for k in
                      ("object_node", "list_node", "upload_method", "download_method")]
        # A node monitored for two roles would keep only one (a parameter never charted,
        # a lot node read as an alarm): refuse it, naming both keys.
        monitored: dict[ua.NodeId, str] = {}
        for key, node in nodes:
            if node:
                try:
                    parsed = ua.NodeId.from_string(node)
                except Exception:
                    out.append((key, f"bad node id {node!r} (expected e.g. ns=2;s=Tool1.State "
                                     "or ns=3;i=1042)"))
                    continue
                if key.startswith(("commands.", "recipes.")):
                    continue  # methods and objects are called or read, not monitored
                if parsed in monitored:
                    out.append((key, f"node {node!r} is already {monitored[parsed]}"))
                else:
                    monitored[parsed] = key
        for i, a in enumerate(self.alarms):
            if a.kind == "bool" and a.alid <= 0:
                out.append((f"alarms[{i}].alid", "a boolean alarm needs an ALID > 0"))
        for name in self.commands:
            if name not in RemoteCommand._value2member_map_:
                out.append((f"commands.{name}", "not a remote command "
                                                f"({', '.join(RemoteCommand)})"))
        if not (0 < self.reconnect_min_s <= self.reconnect_max_s):
            out.append(("reconnect_min_s", "need 0 < reconnect_min_s <= reconnect_max_s"))
        for key in ("publishing_interval_ms", "request_timeout_s", "watchdog_interval_s"):
            if getattr(self, key) <= 0:
                out.append((key, "must be > 0"))
        if self.session_timeout_s <= 2 * self.watchdog_interval_s:
            # our watchdog reads are what keep an idle session alive
            out.append(("session_timeout_s", "must be more than 2 x watchdog_interval_s"))
        if self.sampling_interval_ms < 0:
            out.append(("sampling_interval_ms", "must be >= 0"))
        if self.queue_size < 0:
            out.append(("queue_size", "must be >= 0"))
        return out
