"""A process tool that speaks OPC UA (asyncua server): for the demo, the tests and the bench.

The tool has an E10 state code variable, a lot id and a recipe variable, process
parameters that move while a lot runs, boolean and code alarm variables, and
the methods Start(lot, recipe), Stop(), SelectRecipe(recipe), GetRecipe(ppid)
and PutRecipe(ppid, body). It serves with no security, or Basic256Sha256 Sign /
SignAndEncrypt with a self-signed certificate it generates, optionally behind a
user name and password.

    sim = OpcUaToolSim(OpcUaToolSimConfig(tool_id="ETCH01", secure=True))
    url = await sim.start()
    profile = sim.client_profile()      # an OpcUaToolConfig matching this tool
    ...
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import socket
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography.x509.oid import ExtendedKeyUsageOID

from equipment.events import ControlState, E10State
from equipment.opcua.config import (
    AlarmNode,
    CommandMethod,
    OpcUaSecurity,
    OpcUaToolConfig,
    ParameterNode,
    RecipeMethods,
)

log = logging.getLogger(__name__)

# E10 state codes the simulated tool publishes (a typical vendor integer enumeration).
E10_CODES: dict[E10State, int] = {
    E10State.PRODUCTIVE: 1,
    E10State.STANDBY: 2,
    E10State.ENGINEERING: 3,
    E10State.SCHEDULED_DOWN: 4,
    E10State.UNSCHEDULED_DOWN: 5,
    E10State.NON_SCHEDULED: 6,
}

# Parameter name -> (setpoint, noise sigma) while processing; idle value is 0.
DEFAULT_PARAMETERS: dict[str, tuple[float, float]] = {
    "chamber_pressure_mtorr": (35.0, 0.5),
    "rf_power_w": (1200.0, 8.0),
    "chuck_temperature_c": (60.0, 0.3),
}

# Boolean alarm variables: ALID -> (browse name, text).
DEFAULT_ALARMS: dict[int, tuple[str, str]] = {
    1001: ("DoorOpen", "chamber door open"),
    1002: ("HeliumFlowLow", "backside helium flow low"),
}

NAMESPACE_URI = "urn:fabd:sim:opcua-tool"


class OpcUaToolSimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulated tool serves and behaves."""

    tool_id: str = "OPCUA01"
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port at the first start, keep it across restarts
    secure: bool = False  # True: Basic256Sha256 Sign and SignAndEncrypt only (no None endpoint)
    cert_dir: str = ""  # where the server (and a test client) certificate live; "" = a temp dir
    trusted_client_certs_dir: str = ""  # secure: accept only client certs (or CAs) found here
    username: str = ""  # non-empty: clients must log in with username/password
    password: str = ""
    process_time_s: float = 2.0  # how long one lot takes
    sample_interval_s: float = 0.1  # how often process parameters move while processing
    recipes: tuple[str, ...] = ("ETCH-A", "ETCH-B")
    seed: int = 1


class _Users:
    """Accept exactly one user name/password (asyncua user manager)."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username == self._username and password == self._password:
            return User(role=UserRole.User, name=username)
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def make_certificate(directory: Path, name: str, app_uri: str, *, server: bool
                           ) -> tuple[Path, Path]:
    """Create (or reuse) a self-signed application certificate (DER) and key (PEM)."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    cert, key = directory / f"{name}.der", directory / f"{name}.key.pem"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await cert_gen.setup_self_signed_certificate(
        key, cert, app_uri, socket.gethostname(), use, {"commonName": name})
    return cert, key


def _bad(code: int) -> ua.StatusCode:
    # asyncua turns a raised exception into BadUnexpectedError; a returned code reaches the client.
    return ua.StatusCode(code)


class OpcUaToolSim:
    """A simulated OPC UA process tool; state survives `restart()`."""

    def __init__(self, config: OpcUaToolSimConfig | None = None) -> None:
        self.config = config or OpcUaToolSimConfig()
        self.port = self.config.port
        self.endpoint_url = ""
        self.cert_dir = Path(self.config.cert_dir) if self.config.cert_dir else None
        self.server_cert_file: Path | None = None
        self.server_key_file: Path | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []  # every method call the tool received
        self.processed_lots: list[str] = []
        self.recipe_bodies: dict[str, bytes] = {r: f"recipe {r}\n".encode() for r in
                                                self.config.recipes}
        self._rng = random.Random(self.config.seed)
        self._server: Server | None = None
        self._vars: dict[str, Any] = {}
        self._values: dict[str, Any] = {}
        self._process_task: asyncio.Task[None] | None = None
        self._params = dict(DEFAULT_PARAMETERS)

    # -- names the client profile refers to ------------------------------------------------

    def node_id(self, name: str) -> str:
        """Return the string NodeId of one of the tool's variables or methods."""
        return f"ns=2;s={self.config.tool_id}.{name}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve the tool; return its endpoint URL."""
        cfg = self.config
        if self.port == 0:
            self.port = free_port(cfg.host)
        if not self._values:
            self._values = {
                "State": E10_CODES[E10State.STANDBY], "LotId": "", "Recipe": cfg.recipes[0],
                "ControlState": ControlState.ONLINE_REMOTE.value,
                "AlarmCode": 0, "LotsProcessed": 0, "Recipes": list(cfg.recipes),
                **{p: 0.0 for p in self._params},
                **{f"Alarms.{n}": False for n, _ in DEFAULT_ALARMS.values()},
            }
        user_manager = _Users(cfg.username, cfg.password) if cfg.username else None
        server = Server(user_manager=user_manager)
        await server.init()
        self.endpoint_url = f"opc.tcp://{cfg.host}:{self.port}/fabd/{cfg.tool_id}"
        server.set_endpoint(self.endpoint_url)
        server.set_server_name(f"fabd simulated tool {cfg.tool_id}")
        await server.set_application_uri(f"urn:fabd:sim:{cfg.tool_id}")
        if cfg.username:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if cfg.secure:
            if self.cert_dir is None:
                self.cert_dir = Path(tempfile.mkdtemp(prefix=f"fabd-opcua-{cfg.tool_id}-"))
            self.server_cert_file, self.server_key_file = await make_certificate(
                self.cert_dir, "server", f"urn:fabd:sim:{cfg.tool_id}", server=True)
            await server.load_certificate(str(self.server_cert_file))
            await server.load_private_key(str(self.server_key_file))
            if cfg.trusted_client_certs_dir:
                store = TrustStore([Path(cfg.trusted_client_certs_dir)], [])
                await store.load()
                opts = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI
                        | CertificateValidatorOptions.TRUSTED
                        | CertificateValidatorOptions.PEER_CLIENT)
                server.set_certificate_validator(CertificateValidator(opts, store))
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_Sign,
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        tool = await server.nodes.objects.add_object(
            ua.NodeId(cfg.tool_id, idx), ua.QualifiedName(cfg.tool_id, idx))
        self._vars = {}
        for name, value in self._values.items():
            self._vars[name] = await tool.add_variable(
                ua.NodeId(f"{cfg.tool_id}.{name}", idx), ua.QualifiedName(name, idx),
                value, varianttype=self._variant_type(name, value))
        for name, func, inputs, outputs in (
            ("Start", self._m_start, [ua.VariantType.String, ua.VariantType.String], []),
            ("Stop", self._m_stop, [], []),
            ("SelectRecipe", self._m_select, [ua.VariantType.String], []),
            ("GetRecipe", self._m_get_recipe, [ua.VariantType.String], [ua.VariantType.ByteString]),
            ("PutRecipe", self._m_put_recipe, [ua.VariantType.String, ua.VariantType.ByteString],
             [ua.VariantType.Boolean]),
        ):
            await tool.add_method(ua.NodeId(f"{cfg.tool_id}.{name}", idx),
                                  ua.QualifiedName(name, idx), func, inputs, outputs)
        await server.start()
        self._server = server
        log.info("tool %s: OPC UA simulator serving at %s (secure=%s)", cfg.tool_id,
                 self.endpoint_url, cfg.secure)
        return self.endpoint_url

    async def stop(self) -> None:
        """Stop serving (the simulated tool's state is kept for a later start)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.stop()
        log.info("tool %s: OPC UA simulator stopped", self.config.tool_id)

    async def restart(self) -> None:
        """Stop and serve again on the same port (a tool controller reboot)."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stop processing and serving."""
        if self._process_task is not None:
            self._process_task.cancel()
            await asyncio.gather(self._process_task, return_exceptions=True)
            self._process_task = None
        await self.stop()

    # -- a client profile that matches this tool -------------------------------------------

    def client_profile(self, *, tool_id: str | None = None, security: OpcUaSecurity | None = None,
                       **overrides: Any) -> OpcUaToolConfig:
        """Return the adapter profile (node ids, methods) for this simulated tool."""
        n = self.node_id
        return OpcUaToolConfig(
            tool_id=tool_id or self.config.tool_id,
            endpoint_url=self.endpoint_url,
            security=security or OpcUaSecurity(),
            e10_state_node=n("State"),
            e10_state_values={str(code): state for state, code in E10_CODES.items()},
            control_state_node=n("ControlState"),
            lot_id_node=n("LotId"),
            recipe_node=n("Recipe"),
            alarms=[AlarmNode(node_id=n(f"Alarms.{name}"), alid=alid, text=text)
                    for alid, (name, text) in DEFAULT_ALARMS.items()]
            + [AlarmNode(node_id=n("AlarmCode"), kind="code")],
            parameters=[ParameterNode(node_id=n(p), parameter=p) for p in self._params],
            status_nodes={"lots_processed": n("LotsProcessed")},
            commands={
                "START": CommandMethod(object_node=f"ns=2;s={self.config.tool_id}",
                                       method_node=n("Start"), args=["LOTID", "PPID"]),
                "STOP": CommandMethod(object_node=f"ns=2;s={self.config.tool_id}",
                                      method_node=n("Stop")),
                "ABORT": CommandMethod(object_node=f"ns=2;s={self.config.tool_id}",
                                       method_node=n("Stop")),
                "PP-SELECT": CommandMethod(object_node=f"ns=2;s={self.config.tool_id}",
                                           method_node=n("SelectRecipe"), args=["PPID"]),
            },
            recipes=RecipeMethods(
                object_node=f"ns=2;s={self.config.tool_id}", list_node=n("Recipes"),
                upload_method=n("GetRecipe"), download_method=n("PutRecipe")),
            **overrides,
        )

    # -- what a test or the demo can make the tool do --------------------------------------

    async def set_e10(self, state: E10State) -> None:
        """Put the tool in an E10 state (as an operator or the tool itself would)."""
        await self._write("State", E10_CODES[state])

    async def set_control_state(self, state: ControlState) -> None:
        """Switch the tool's control state (an operator at the tool going local or remote)."""
        await self._write("ControlState", state.value)

    async def set_alarm(self, alid: int, on: bool) -> None:
        """Set or clear one of the boolean alarms (ALID from DEFAULT_ALARMS)."""
        await self._write(f"Alarms.{DEFAULT_ALARMS[alid][0]}", on)

    async def set_alarm_code(self, code: int) -> None:
        """Publish the active alarm code (0 = none)."""
        await self._write("AlarmCode", code)

    async def set_parameter(self, name: str, value: float) -> None:
        """Write one process parameter."""
        await self._write(name, float(value))

    async def set_bad_quality(self, name: str,
                              status: int = ua.StatusCodes.BadNoCommunication) -> None:
        """Report a variable ("LotId", "Alarms.DoorOpen", ...) as Bad with no value.

        What a gateway server does when it loses the PLC behind it; the tool's own
        value is kept and `set_good_quality()` reports it again.
        """
        if self._server is not None:
            await self._vars[name].write_value(
                ua.DataValue(Value=None, StatusCode=ua.StatusCode(status)))

    async def set_good_quality(self, name: str) -> None:
        """Report a variable's value with Good status again."""
        await self._write(name, self._values[name])

    async def start_lot(self, lot_id: str, recipe: str) -> None:
        """Start processing a lot (what the Start method does)."""
        if self._values["LotId"]:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidState)
        if recipe and recipe not in self.recipe_bodies:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidArgument)
        if recipe:
            await self._write("Recipe", recipe)
        await self._write("State", E10_CODES[E10State.PRODUCTIVE])
        await self._write("LotId", lot_id)
        self._process_task = asyncio.create_task(
            self._process_loop(lot_id), name=f"opcua-sim-process[{self.config.tool_id}]")

    async def stop_lot(self) -> None:
        """Abort the running lot, if any."""
        task, self._process_task = self._process_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._values["LotId"]:
            await self._end_lot()

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _variant_type(name: str, value: Any) -> ua.VariantType:
        if name == "Recipes":
            return ua.VariantType.String
        if isinstance(value, bool):
            return ua.VariantType.Boolean
        if isinstance(value, int):
            return ua.VariantType.Int32
        if isinstance(value, float):
            return ua.VariantType.Double
        return ua.VariantType.String

    async def _write(self, name: str, value: Any) -> None:
        self._values[name] = value
        if self._server is not None:
            await self._vars[name].write_value(
                ua.Variant(value, self._variant_type(name, value)))

    async def _process_loop(self, lot_id: str) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.process_time_s
        while loop.time() < end:
            for name, (setpoint, sigma) in self._params.items():
                await self._write(name, self._rng.gauss(setpoint, sigma))
            await asyncio.sleep(self.config.sample_interval_s)
        self.processed_lots.append(lot_id)
        self._process_task = None
        await self._end_lot()

    async def _end_lot(self) -> None:
        await self._write("LotsProcessed", len(self.processed_lots))
        await self._write("LotId", "")
        await self._write("State", E10_CODES[E10State.STANDBY])

    async def _m_start(self, parent: ua.NodeId, lot: ua.Variant, recipe: ua.Variant) -> list | ua.StatusCode:
        self.calls.append(("Start", (lot.Value, recipe.Value)))
        if self._values["ControlState"] != ControlState.ONLINE_REMOTE.value:
            return _bad(ua.StatusCodes.BadInvalidState)  # E30: the host commands only when remote
        if not lot.Value:
            return _bad(ua.StatusCodes.BadInvalidArgument)
        try:
            await self.start_lot(lot.Value, recipe.Value or "")
        except ua.UaStatusCodeError as exc:
            return _bad(exc.code)
        return []

    async def _m_stop(self, parent: ua.NodeId) -> list | ua.StatusCode:
        self.calls.append(("Stop", ()))
        if not self._values["LotId"]:
            return _bad(ua.StatusCodes.BadInvalidState)
        await self.stop_lot()
        return []

    async def _m_select(self, parent: ua.NodeId, recipe: ua.Variant) -> list | ua.StatusCode:
        self.calls.append(("SelectRecipe", (recipe.Value,)))
        if recipe.Value not in self.recipe_bodies:
            return _bad(ua.StatusCodes.BadInvalidArgument)
        if self._values["LotId"]:
            return _bad(ua.StatusCodes.BadInvalidState)
        await self._write("Recipe", recipe.Value)
        return []

    async def _m_get_recipe(self, parent: ua.NodeId, ppid: ua.Variant) -> list | ua.StatusCode:
        self.calls.append(("GetRecipe", (ppid.Value,)))
        body = self.recipe_bodies.get(ppid.Value)
        if body is None:
            return _bad(ua.StatusCodes.BadNotFound)
        return [ua.Variant(body, ua.VariantType.ByteString)]

    async def _m_put_recipe(self, parent: ua.NodeId, ppid: ua.Variant, body: ua.Variant) -> list | ua.StatusCode:
        self.calls.append(("PutRecipe", (ppid.Value, hashlib.sha256(body.Value or b"").hexdigest())))
        self.recipe_bodies[ppid.Value] = body.Value or b""
        await self._write("Recipes", sorted(self.recipe_bodies))
        return [ua.Variant(True, ua.VariantType.Boolean)]
