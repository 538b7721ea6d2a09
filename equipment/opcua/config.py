"""OPC UA tool profiles: which node means what, how to connect, how to command.

Node ids use the OPC UA string syntax (`ns=2;s=Tool1.State`, `ns=3;i=1042`).
A profile is validated when it is built (`OpcUaToolConfig.validate()` is called
by the session before connecting), so a bad node id fails at start with its key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec
from asyncua import ua

from equipment.events import E10State, RemoteCommand
from equipment.opcua.errors import OpcUaConfigError


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

    def validate(self, where: str) -> None:
        """Raise OpcUaConfigError when the combination cannot work."""
        if (self.policy == "None") != (self.mode == "None"):
            raise OpcUaConfigError(f"{where}.security: policy {self.policy!r} needs a matching "
                                   f"mode (got {self.mode!r})")
        if self.policy != "None":
            for key in ("client_cert_file", "client_key_file"):
                path = getattr(self, key)
                if not path:
                    raise OpcUaConfigError(f"{where}.security.{key}: required for {self.policy}")
                if not Path(path).is_file():
                    raise OpcUaConfigError(f"{where}.security.{key}: no such file {path!r}")
            if not self.server_cert_file and not self.trusted_certs_dir:
                raise OpcUaConfigError(f"{where}.security: set server_cert_file or "
                                       "trusted_certs_dir (which server do we trust?)")
        if self.server_cert_file and not Path(self.server_cert_file).is_file():
            raise OpcUaConfigError(f"{where}.security.server_cert_file: no such file "
                                   f"{self.server_cert_file!r}")
        if self.trusted_certs_dir and not Path(self.trusted_certs_dir).is_dir():
            raise OpcUaConfigError(f"{where}.security.trusted_certs_dir: no such directory "
                                   f"{self.trusted_certs_dir!r}")
        if self.username and not (self.password_file or self.password_env):
            raise OpcUaConfigError(f"{where}.security: username set but neither password_file "
                                   "nor password_env")
        if self.password_file and not Path(self.password_file).is_file():
            raise OpcUaConfigError(f"{where}.security.password_file: no such file")

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
    lot_id_node: str = ""  # non-empty value = that lot is in process; empty = idle
    recipe_node: str = ""  # the selected / running recipe (PPID)
    alarms: list[AlarmNode] = []
    parameters: list[ParameterNode] = []
    status_nodes: dict[str, str] = {}  # name -> node id; latest values in session.status
    commands: dict[str, CommandMethod] = {}  # RemoteCommand value ("START", ...) -> method
    recipes: RecipeMethods | None = None
    publishing_interval_ms: float = 100.0  # subscription publishing interval
    sampling_interval_ms: float = 0.0  # monitored item sampling; 0 = as fast as the server can
    queue_size: int = 10  # per monitored item, so fast parameters are not sampled away
    request_timeout_s: float = 5.0
    watchdog_interval_s: float = 2.0  # how often the session checks the server is alive
    reconnect_min_s: float = 0.5  # backoff floor
    reconnect_max_s: float = 30.0  # backoff cap (jittered exponential in between)

    def validate(self, where: str = "opcua") -> None:
        """Raise OpcUaConfigError naming the first bad key."""
        where = f"{where}[{self.tool_id}]"
        if not self.tool_id:
            raise OpcUaConfigError(f"{where}.tool_id: empty")
        if not self.endpoint_url.startswith("opc.tcp://"):
            raise OpcUaConfigError(f"{where}.endpoint_url: must start with opc.tcp:// "
                                   f"(got {self.endpoint_url!r})")
        self.security.validate(where)
        nodes = [("e10_state_node", self.e10_state_node), ("lot_id_node", self.lot_id_node),
                 ("recipe_node", self.recipe_node)]
        nodes += [(f"alarms[{i}].node_id", a.node_id) for i, a in enumerate(self.alarms)]
        nodes += [(f"parameters[{i}].node_id", p.node_id) for i, p in enumerate(self.parameters)]
        nodes += [(f"status_nodes.{k}", v) for k, v in self.status_nodes.items()]
        for name, m in self.commands.items():
            nodes += [(f"commands.{name}.object_node", m.object_node),
                      (f"commands.{name}.method_node", m.method_node)]
        if self.recipes is not None:
            nodes += [(f"recipes.{k}", getattr(self.recipes, k)) for k in
                      ("object_node", "list_node", "upload_method", "download_method")]
        for key, node in nodes:
            if node:
                try:
                    ua.NodeId.from_string(node)
                except Exception as exc:
                    raise OpcUaConfigError(f"{where}.{key}: bad node id {node!r} ({exc})") from None
        for i, a in enumerate(self.alarms):
            if a.kind == "bool" and a.alid <= 0:
                raise OpcUaConfigError(f"{where}.alarms[{i}].alid: a boolean alarm needs an ALID")
        for name in self.commands:
            if name not in RemoteCommand._value2member_map_:
                raise OpcUaConfigError(f"{where}.commands.{name}: not a remote command "
                                       f"({', '.join(RemoteCommand)})")
        if not (0 < self.reconnect_min_s <= self.reconnect_max_s):
            raise OpcUaConfigError(f"{where}.reconnect_min_s: need 0 < min <= reconnect_max_s")
        if self.publishing_interval_ms <= 0:
            raise OpcUaConfigError(f"{where}.publishing_interval_ms: must be > 0")
