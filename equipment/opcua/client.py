"""One connection to one OPC UA server (asyncua), with the profile's security applied.

The client layer knows OPC UA, not fab semantics: connect with the configured
secure channel and identity, subscribe data changes, call methods, read values
and tell the session when the connection is gone. Reconnecting is the
session's job (`equipment.opcua.session`), so asyncua's own auto-reconnect is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from equipment.opcua.config import OpcUaToolConfig
from equipment.opcua.errors import OpcUaConnectionError, OpcUaSecurityError

log = logging.getLogger(__name__)

# Status codes that mean "fix the PKI or the credentials", not "the network blinked".
SECURITY_STATUS = frozenset({
    ua.StatusCodes.BadCertificateUntrusted, ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadCertificateUriInvalid, ua.StatusCodes.BadCertificateTimeInvalid,
    ua.StatusCodes.BadCertificateUseNotAllowed, ua.StatusCodes.BadCertificateRevoked,
    ua.StatusCodes.BadSecurityChecksFailed, ua.StatusCodes.BadSecurityPolicyRejected,
    ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
})


def _uri_of(cert: x509.Certificate) -> str:
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return uris[0]
    return ""


class _LinkLossFilter(logging.Filter):
    """Drop asyncua's lines about a lost link: the session says it once (one WARNING).

    The publish loop's traceback, and the WARNINGs of the teardown after a loss (the
    session and channel cannot be closed over a dead link; a reply to a request given up).
    """

    _TEARDOWN = ("close_session was called but connection is closed",
                 "close_session but connection wasn't established",
                 "close_secure_channel was called but connection is closed",
                 "Future for request id %s is already done")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self._TEARDOWN:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, OSError | TimeoutError)
                    and str(record.msg).startswith("Publish iteration crashed"))


for _name in ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
              "asyncua.client.ua_client.UASocketProtocol"):
    logging.getLogger(_name).addFilter(_LinkLossFilter())


class _PinnedServer:
    """Certificate validator that trusts exactly one server certificate."""

    def __init__(self, der: bytes) -> None:
        self._der = der

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        if cert.public_bytes(Encoding.DER) != self._der:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


def status_name(exc: BaseException) -> str:
    """Return the OPC UA status name of an error (or its class name)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        with contextlib.suppress(Exception):
            return ua.StatusCode(code).name
    return type(exc).__name__


def is_security_error(exc: BaseException) -> bool:
    """Tell whether a connect failure needs a PKI/credential fix rather than a retry."""
    while exc is not None:
        if getattr(exc, "code", None) in SECURITY_STATUS:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


class OpcUaClient:
    """An asyncua client for one tool: connect, subscribe, call, read, detect loss."""

    def __init__(self, config: OpcUaToolConfig) -> None:
        self.config = config
        self._client: Client | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._subscription: Any = None

    # -- connection -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the secure channel and session; raise OpcUaConnectionError/SecurityError."""
        cfg, sec = self.config, self.config.security
        client = Client(cfg.endpoint_url, timeout=cfg.request_timeout_s,
                        watchdog_intervall=cfg.watchdog_interval_s)
        client.name = client.description = f"fabd {cfg.tool_id}"
        client.session_timeout = cfg.session_timeout_s * 1000  # ms
        client.connection_lost_callback = self._on_lost
        try:
            if sec.policy != "None":
                cert = await uacrypto.load_certificate(sec.client_cert_file)
                client.application_uri = sec.application_uri or _uri_of(cert) or "urn:fabd:client"
                key_password = os.environ.get(sec.client_key_password_env) if \
                    sec.client_key_password_env else None
                mode = getattr(ua.MessageSecurityMode, sec.mode)
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    certificate=sec.client_cert_file, private_key=sec.client_key_file,
                    # The server certificate comes from GetEndpoints; the validator below
                    # then checks it against the pinned file or the trust directory, so an
                    # untrusted server fails fast with BadCertificateUntrusted.
                    private_key_password=key_password, server_certificate=None, mode=mode)
                client.certificate_validator = await self._validator()
            if sec.username:
                client.set_user(sec.username)
                client.set_password(sec.password() or "")
            await client.connect()
        except (OSError, TimeoutError, ua.UaError, ConnectionError) as exc:
            # asyncua has already dropped the socket of a failed connect; disconnect() would
            # send close requests over it and log two WARNINGs per attempt of an outage.
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            if is_security_error(exc):
                raise OpcUaSecurityError(f"{cfg.endpoint_url}: {status_name(exc)}") from exc
            raise OpcUaConnectionError(f"{cfg.endpoint_url}: {status_name(exc)} {exc}") from exc
        self._client = client

    async def _validator(self) -> Any:
        sec = self.config.security
        if sec.server_cert_file:
            cert = await uacrypto.load_certificate(sec.server_cert_file)
            return _PinnedServer(cert.public_bytes(Encoding.DER))
        store = TrustStore([Path(sec.trusted_certs_dir)], [])
        await store.load()
        opts = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI
                | CertificateValidatorOptions.TRUSTED | CertificateValidatorOptions.REVOKED
                | CertificateValidatorOptions.PEER_SERVER)
        return CertificateValidator(opts, store)

    async def _on_lost(self, exc: Exception) -> None:
        self.mark_lost(status_name(exc))

    def mark_lost(self, reason: str) -> None:
        """Record that the connection is gone (called by asyncua or a status notification)."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def wait_lost(self) -> str:
        """Return (a reason) once the connection is gone; probes the server between signals."""
        cfg = self.config
        while True:
            try:
                async with asyncio.timeout(cfg.watchdog_interval_s):
                    await self._lost.wait()
                return self._lost_reason
            except TimeoutError:
                pass
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # swallowed by a 3.11 wait_for inside asyncua
            try:
                async with asyncio.timeout(cfg.request_timeout_s):
                    await self.read_server_state()
            except Exception as exc:  # any failure of the probe means the session is unusable
                self.mark_lost(status_name(exc))

    async def read_server_state(self) -> Any:
        """Read Server.ServerStatus.State (the liveness probe)."""
        client = self._require()
        return await client.nodes.server_state.read_value()

    async def close(self) -> None:
        """Close session, channel and socket; never raises."""
        client, self._client = self._client, None
        if client is None:
            return
        # asyncua's teardown can swallow a cancellation, so never wait on it unbounded:
        # give it request_timeout_s, then drop the socket.
        task = asyncio.create_task(client.disconnect(),
                                   name=f"opcua-disconnect[{self.config.tool_id}]")
        try:
            await asyncio.wait({task}, timeout=self.config.request_timeout_s)
        finally:
            if not task.done():
                with contextlib.suppress(Exception):
                    client.disconnect_socket()
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a failed disconnect of a dead link is expected

    def _require(self) -> Client:
        if self._client is None:
            raise OpcUaConnectionError(f"{self.config.endpoint_url}: not connected")
        return self._client

    # -- services -------------------------------------------------------------------------

    async def subscribe(self, node_ids: list[str], handler: Any) -> list[str]:
        """Subscribe data changes of the nodes; return the node ids the server refused."""
        cfg = self.config
        client = self._require()
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = cfg.publishing_interval_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(cfg.publishing_interval_ms)
        params.MaxNotificationsPerPublish = 0  # no limit
        params.PublishingEnabled = True
        params.Priority = 0
        self._subscription = await client.create_subscription(params, handler)
        nodes = [client.get_node(n) for n in node_ids]
        results = await self._subscription.subscribe_data_change(
            nodes, queuesize=cfg.queue_size, sampling_interval=cfg.sampling_interval_ms)
        return [n for n, r in zip(node_ids, results, strict=True) if isinstance(r, ua.StatusCode)]

    async def call(self, object_node: str, method_node: str, args: list[Any],
                   timeout_s: float) -> list[Any]:
        """Call a method; return its output arguments (raises ua.UaStatusCodeError on Bad)."""
        client = self._require()
        obj = client.get_node(object_node)
        out = await asyncio.wait_for(
            obj.call_method(ua.NodeId.from_string(method_node), *args), timeout_s)
        if out is None:
            return []
        return out if isinstance(out, list) else [out]

    async def read(self, node_id: str) -> Any:
        """Read one variable's value."""
        return await self._require().get_node(node_id).read_value()

