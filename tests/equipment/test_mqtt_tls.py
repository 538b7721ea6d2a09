"""MQTT adapter over TLS: a private CA, a mosquitto that requires client certificates."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from equipment.events import RecordingSink
from equipment.mqtt.config import MqttBrokerConfig, MqttTls, TopicMapping
from equipment.mqtt.errors import MqttConfigError
from equipment.mqtt.session import MqttSession, MqttSessionState
from tests.support import MosquittoServer, new_workdir
from tests.support import eventually as _eventually


def eventually(predicate, timeout_s: float = 30.0, **kw):
    """tests.support.eventually with a deadline that suits a busy shared machine."""
    return _eventually(predicate, timeout_s=timeout_s, **kw)


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d: Path) -> None:
    """Write ca.pem, server.pem/.key (127.0.0.1) and client.pem/.key, signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fabd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(d / "ca", ca_key, ca)
    for name, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                  x509.DNSName("localhost")]),
                      ("client", [x509.DNSName("fabd")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(d / name, key, cert)


class TlsMosquitto(MosquittoServer):
    """mosquitto with one TLS listener that requires a client certificate from our CA."""

    def argv(self) -> list[str]:
        args = super().argv()
        d = self.workdir
        conf = d / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 f"cafile {d / 'ca.pem'}", f"certfile {d / 'server.pem'}",
                 f"keyfile {d / 'server.key'}", "require_certificate true"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto drops to a user that cannot read
        conf.write_text("\n".join(lines) + "\n")
        return args


@pytest.fixture
def tls_broker() -> Iterator[TlsMosquitto]:
    workdir = new_workdir("mqtt-tls")
    make_pki(workdir)
    server = TlsMosquitto(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def tls_config(server: TlsMosquitto, with_client_cert: bool) -> MqttBrokerConfig:
    d = server.workdir
    tls = MqttTls(ca_file=str(d / "ca.pem"),
                  client_cert_file=str(d / "client.pem") if with_client_cert else "",
                  client_key_file=str(d / "client.key") if with_client_cert else "")
    return MqttBrokerConfig(broker_id="secure", port=server.port, client_id="fabd-tls", tls=tls,
                            subscriptions=[TopicMapping(topic="fab/{tool_id}/pv/{parameter}")],
                            reconnect_min_s=0.1, reconnect_max_s=0.3, request_timeout_s=1.0)


async def test_tls_with_client_certificate_delivers_points(tls_broker) -> None:
    sink = RecordingSink()
    session = MqttSession(tls_config(tls_broker, with_client_cert=True), sink)
    task = asyncio.create_task(session.run(), name="mqtt[secure]")
    try:
        await session.wait_state(MqttSessionState.CONNECTED, timeout_s=30)
        d = tls_broker.workdir
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        ctx.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
        async with aiomqtt.Client("127.0.0.1", tls_broker.port, tls_context=ctx) as publisher:
            await publisher.publish("fab/DIFF02/pv/o2_ppm", b"3.5", qos=1)
        await eventually(lambda: sink.point_list, what="point over TLS")
        assert (sink.point_list[0].tool_id, sink.point_list[0].value) == ("DIFF02", 3.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_tls_without_the_required_client_certificate_never_connects(tls_broker) -> None:
    session = MqttSession(tls_config(tls_broker, with_client_cert=False), RecordingSink())
    task = asyncio.create_task(session.run(), name="mqtt[secure]")
    try:
        await eventually(lambda: session.failed_attempts >= 2, what="refused twice")
        assert session.connects == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_unreadable_tls_files_fail_at_start_with_their_key(tmp_path) -> None:
    # Existing but unreadable files used to pass validation and crash the session at
    # its first connect with a bare SSLError (no key named, the component restarting).
    make_pki(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(MqttConfigError, match=r"^ca_file: .*junk\.pem"):
        MqttTls(ca_file=str(junk))
    with pytest.raises(MqttConfigError, match=r"^client_cert_file: .*junk\.pem"):
        MqttTls(ca_file=str(tmp_path / "ca.pem"), client_cert_file=str(junk),
                client_key_file=str(tmp_path / "client.key"))
    with pytest.raises(MqttConfigError, match=r"^client_cert_file: .*server\.key"):
        MqttTls(client_cert_file=str(tmp_path / "client.pem"),
                client_key_file=str(tmp_path / "server.key"))  # not this certificate's key
    MqttTls(ca_file=str(tmp_path / "ca.pem"), client_cert_file=str(tmp_path / "client.pem"),
            client_key_file=str(tmp_path / "client.key"))


def test_out_of_range_mqtt_numbers_fail_at_start_with_their_key() -> None:
    # These used to crash the session at connect (struct.error / ValueError from paho).
    with pytest.raises(MqttConfigError, match=r"^keepalive_s: "):
        MqttBrokerConfig(keepalive_s=-1)
    with pytest.raises(MqttConfigError, match=r"^keepalive_s: "):
        MqttBrokerConfig(keepalive_s=70_000)
    with pytest.raises(MqttConfigError, match=r"^session_expiry_s: "):
        MqttBrokerConfig(protocol="5", session_expiry_s=-1)
    with pytest.raises(MqttConfigError, match=r"^session_expiry_s: "):
        MqttBrokerConfig(protocol="5", session_expiry_s=2**32)
