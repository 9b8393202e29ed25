"""The hooks against a real RabbitMQ (Debian's rabbitmq-server, MQTT plugin, HTTP auth backend) on loopback.

A real `thingward serve` answers the hooks over HTTPS (its own API port, the hook secret as basic auth in
RabbitMQ's URLs); a private RabbitMQ node takes devices over mutual TLS with the certificate's CN as the
username and asks thingward about every login, vhost, queue, exchange and topic. Paho clients with
certificates from the platform's CA play the devices (the `device` fixture of tests/broker/conftest.py).
The last test stops thingward: RabbitMQ must then refuse everyone (fail closed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from lab.mqtt import Creds
from lab.rabbitmq import RabbitNode, RabbitTls, rabbitmq_missing, rabbitmq_node
from lab.served import ServerProcess, serving, wait_for
from thingward.cli.main import app
from thingward.pki.ca import certificate_pem, issue_device_certificate, private_key_pem
from thingward.pki.files import write_atomic, write_secret
from thingward.platform import Platform, init_data_dir

pytestmark = pytest.mark.skipif(rabbitmq_missing() is not None, reason=rabbitmq_missing() or "")

SECRET_ENV = "THINGWARD_TEST_HOOKS_SECRET"
NOT_DELIVERED_WAIT = 1.5  # seconds a refused message is given to show up anyway

# The watcher may subscribe to and receive every thing's telemetry: the "subscriber with rights".
WATCHER_POLICY = {
    "description": "a dashboard that reads every camera's telemetry",
    "statements": [
        {
            "sid": "read-telemetry",
            "effect": "allow",
            "actions": ["subscribe", "receive"],
            "resources": ["things/+/telemetry"],
        },
    ],
}


@dataclass
class Lab:
    data_dir: Path
    ca: Path
    creds: dict[str, Creds]
    server: ServerProcess | None
    node: RabbitNode
    stop_server: Callable[[], None]


def cli(data_dir: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def csr_for(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return key, x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def save(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Creds:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    write_atomic(cert_path, certificate_pem(cert))
    write_secret(key_path, private_key_pem(key))
    return Creds(name=name, cert=cert_path, key=key_path, serial=cert.serial_number)


def enroll(data_dir: Path, directory: Path, name: str) -> Creds:
    """A registered thing, enrolled with a CSR as a device does (in this process: no server needed)."""
    token = cli(data_dir, "device", "add", name)["enrollment_token"]
    key, csr = csr_for(name)
    platform = Platform.open(data_dir)
    try:
        enrollment = platform.enroll(token, csr.public_bytes(Encoding.PEM), source="test")
    finally:
        platform.close()
    return save(directory, name, enrollment.certificate, key)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("hooks-rabbitmq")
    data_dir = root / "data"
    init_data_dir(data_dir)
    devices = root / "devices"
    devices.mkdir()
    creds = {name: enroll(data_dir, devices, name) for name in ("cam-a", "cam-b", "cam-c", "watcher")}
    policy_file = root / "watcher.json"
    policy_file.write_text(json.dumps(WATCHER_POLICY))
    cli(data_dir, "policy", "add", "dashboard", str(policy_file))
    cli(data_dir, "policy", "attach", "dashboard", "--thing", "watcher")
    # A certificate from the platform's own CA for a thing the registry does not know.
    platform = Platform.open(data_dir)
    try:
        key, csr = csr_for("ghost")
        ghost = issue_device_certificate(platform.ca, csr, "ghost", dt.timedelta(days=1))
        creds["ghost"] = save(devices, "ghost", ghost, key)
        tls = RabbitTls(platform.ca_certificate_path, platform.server_certificate_path, platform.server_key_path)
        ca = platform.ca_certificate_path
    finally:
        platform.close()
    secret = secrets.token_urlsafe(32)
    env = {**os.environ, "THINGWARD_HOOKS__SECRET_ENV": SECRET_ENV, SECRET_ENV: secret}
    with serving(data_dir, env) as server:
        hooks_url = f"https://hooks:{secret}@localhost:{server.api.rsplit(':', 1)[1]}/hooks/rabbitmq"
        with rabbitmq_node(root / "rabbitmq", tls, hooks_url, ca) as node:

            def stop_server() -> None:
                server.process.send_signal(signal.SIGINT)
                server.process.wait(timeout=15)

            yield Lab(data_dir, ca, creds, server, node, stop_server)


@pytest.fixture
def pki(lab: Lab) -> Any:
    """The conftest's `device` fixture verifies the broker against `pki.ca_file`: here, the platform CA."""
    return SimpleNamespace(ca_file=lab.ca)


def no_message(client: Any, topic: str) -> bool:
    try:
        while True:
            message = client.next_message(timeout=NOT_DELIVERED_WAIT)
            if message.topic == topic:
                return False
    except queue.Empty:
        return True


def test_a_device_publishes_to_its_own_topic_and_a_subscriber_with_rights_receives_it(lab: Lab, device: Any) -> None:
    watcher = device(lab.creds["watcher"], lab.node.mqtt_port)
    outcome = watcher.connect()
    assert outcome.accepted, (outcome.detail, lab.node.log_text[-3000:])
    assert watcher.subscribe("things/cam-a/telemetry") == 1
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port)
    assert cam_a.connect().accepted
    # RabbitMQ asks about the routing key things.cam-a.telemetry: the hook reads it as things/cam-a/telemetry.
    cam_a.publish("things/cam-a/telemetry", b"21.5")
    message = watcher.next_message()
    assert (message.topic, message.payload) == ("things/cam-a/telemetry", b"21.5")


def test_a_device_publishing_to_another_things_topic_is_not_delivered(lab: Lab, device: Any) -> None:
    watcher = device(lab.creds["watcher"], lab.node.mqtt_port)
    assert watcher.connect().accepted
    assert watcher.subscribe("things/cam-b/telemetry") == 1
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port)
    assert cam_a.connect().accepted
    cam_a.client.publish("things/cam-b/telemetry", b"forged", qos=1)
    assert cam_a.disconnected.wait(5), "RabbitMQ closes a connection whose publish is refused"
    assert no_message(watcher, "things/cam-b/telemetry")
    cam_b = device(lab.creds["cam-b"], lab.node.mqtt_port)
    assert cam_b.connect().accepted
    cam_b.publish("things/cam-b/telemetry", b"genuine")
    assert watcher.next_message().payload == b"genuine"


def test_a_device_subscribing_to_another_things_topic_is_refused(lab: Lab, device: Any) -> None:
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port)
    assert cam_a.connect().accepted
    assert cam_a.subscribe("things/cam-a/commands/#") == 1
    try:
        granted = cam_a.subscribe("things/cam-b/commands/#")
    except AssertionError:  # no SUBACK: RabbitMQ closed the connection instead
        granted = 128
    assert granted == 128


def test_an_unknown_certificate_is_refused(lab: Lab, device: Any) -> None:
    ghost = device(lab.creds["ghost"], lab.node.mqtt_port)
    assert not ghost.connect().accepted


def test_a_password_login_with_another_things_name_is_refused(lab: Lab, device: Any) -> None:
    # RabbitMQ prefers a username and password over the certificate: the hook refuses any password login.
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port, client_id="cam-b")
    cam_a.client.username_pw_set("cam-b", "any password")
    assert not cam_a.connect().accepted


def test_a_client_id_other_than_the_certificates_name_is_refused(lab: Lab, device: Any) -> None:
    # The certificate login carries no client id; the hook checks it at the vhost question that follows.
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port, client_id="cam-b")
    assert not cam_a.connect().accepted


def test_a_disabled_thing_is_refused_once_the_registry_changes(lab: Lab, device: Any) -> None:
    cam_b = device(lab.creds["cam-b"], lab.node.mqtt_port)
    assert cam_b.connect().accepted
    cam_b.close()
    cli(lab.data_dir, "device", "disable", "cam-b")

    def refused() -> bool:
        attempt = device(lab.creds["cam-b"], lab.node.mqtt_port)
        accepted = attempt.connect().accepted
        attempt.close()
        return not accepted

    assert wait_for(refused, timeout=5, interval=0.3)


def test_a_revoked_thing_is_refused_even_though_rabbitmq_reads_no_crl(lab: Lab, device: Any) -> None:
    cam_c = device(lab.creds["cam-c"], lab.node.mqtt_port)
    assert cam_c.connect().accepted
    cam_c.close()
    cli(lab.data_dir, "device", "revoke", "cam-c")

    def refused() -> bool:
        attempt = device(lab.creds["cam-c"], lab.node.mqtt_port)
        accepted = attempt.connect().accepted
        attempt.close()
        return not accepted

    assert wait_for(refused, timeout=5, interval=0.3)


def test_with_thingward_stopped_rabbitmq_refuses(lab: Lab, device: Any) -> None:
    lab.stop_server()
    cam_a = device(lab.creds["cam-a"], lab.node.mqtt_port)
    assert not cam_a.connect(timeout=10).accepted
