"""Managed Mosquitto, the real process: what the generated configuration refuses, ACL reloads, dropped
sessions, ingestion and publishing through the internal client. One broker for the module; each test
leaves the world as it found it."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import ssl
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.conftest import MqttDevice, connected
from broker.test_connect import _handshake, _tls_client
from lab.mosquitto import MosquittoHarness, require_mosquitto
from lab.mqtt import Creds, Pki
from thingward.broker.base import BrokerLimits
from thingward.broker.mosquitto import MosquittoProcess, raw_mosquitto, render_config
from thingward.broker.mosquitto_acl import INTERNAL_IDENTITY
from thingward.policy.document import DEFAULT_POLICY, parse_policy_document
from thingward.policy.engine import PolicyEngine
from thingward.policy.world import GroupFacts, PolicyWorld, ThingFacts

NAMES = ("cam1", "cam2", "cam3")


def default_world(names: tuple[str, ...] = NAMES, **extra: object) -> PolicyWorld:
    return PolicyWorld.from_facts(
        things=[ThingFacts(name, groups=("default",)) for name in names],
        groups=[GroupFacts("default")],
        policies={"default-device": DEFAULT_POLICY},
        group_policies={"default": ["default-device"]},
    )


@pytest.fixture(scope="module")
def mpki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("mosquitto-pki"))


@pytest.fixture(scope="module")
def creds(mpki: Pki) -> dict[str, Creds]:
    return {name: mpki.device(name) for name in NAMES}


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(default_world())


@pytest.fixture(scope="module")
def mosq(mpki: Pki, engine: PolicyEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoHarness]:
    require_mosquitto()
    harness = MosquittoHarness(mpki, engine, tmp_path_factory.mktemp("mosquitto-run"), plaintext_port=0)
    yield harness
    harness.close()


@pytest.fixture
def client(mpki: Pki) -> Iterator[Callable[..., MqttDevice]]:
    made: list[MqttDevice] = []

    def make(creds: Creds | None, port: int, client_id: str | None = None, **options: object) -> MqttDevice:
        cid = client_id if client_id is not None else (creds.name if creds else "anonymous")
        made.append(MqttDevice(port=port, ca_file=mpki.ca_file, creds=creds, client_id=cid, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
def restore_world(mosq: MosquittoHarness, engine: PolicyEngine) -> Iterator[None]:
    yield
    engine.replace_world(default_world())
    mosq.call(mosq.broker.policies_changed())


def test_generated_config_has_no_plaintext_listener_and_requires_certificates(mpki: Pki, tmp_path: Path) -> None:
    text = render_config(
        host="127.0.0.1", port=8883, tls=mpki.tls, limits=BrokerLimits(), work_dir=tmp_path, acl_file=tmp_path / "a"
    )
    listeners = [line for line in text.splitlines() if line.startswith("listener ")]
    assert listeners == ["listener 8883 127.0.0.1"]
    for line in (
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "tls_version tlsv1.2",
        f"crlfile {mpki.crl_file}",
        f"cafile {mpki.ca_file}",
        f"acl_file {tmp_path / 'a'}",
        f"max_packet_size {BrokerLimits().max_payload_bytes + 4096}",
    ):
        assert line in text.splitlines()
    assert "password_file" not in text and "psk" not in text


def test_generated_files_are_private(mosq: MosquittoHarness) -> None:
    for path in (mosq.broker.config_path, mosq.broker.acl_path, mosq.broker.config_path.parent / "internal.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(mosq.broker.config_path.parent.stat().st_mode) == 0o700


def test_client_without_certificate_is_refused(mosq: MosquittoHarness, client: Callable[..., MqttDevice]) -> None:
    outcome = client(None, mosq.port, client_id="cam1").connect()
    assert not outcome.accepted, outcome.detail


def test_certificate_from_another_ca_is_refused(
    mosq: MosquittoHarness, client: Callable[..., MqttDevice], tmp_path: Path
) -> None:
    rogue = Pki(tmp_path / "rogue")
    outcome = client(rogue.device("cam1"), mosq.port).connect()
    assert not outcome.accepted, outcome.detail


def test_tls_below_1_2_is_refused(mosq: MosquittoHarness, mpki: Pki, creds: dict[str, Creds]) -> None:
    try:
        old = _tls_client(mpki, creds["cam1"], ssl.TLSVersion.TLSv1_1)
    except (ValueError, ssl.SSLError) as e:
        pytest.skip(f"the local OpenSSL cannot configure a TLS 1.1 client: {e}")
    # Control: the same client settings at TLS 1.2 complete the handshake.
    assert _handshake(_tls_client(mpki, creds["cam1"], ssl.TLSVersion.TLSv1_2), mosq.port) == "TLSv1.2"
    try:
        version = _handshake(old, mosq.port)
    except ssl.SSLError as e:
        if "NO_PROTOCOLS_AVAILABLE" in str(e).upper() or "NO PROTOCOLS AVAILABLE" in str(e).upper():
            pytest.skip(f"the local OpenSSL refuses to send a TLS 1.1 ClientHello: {e}")
        return  # mosquitto ended the handshake
    pytest.fail(f"a TLS 1.1 handshake succeeded ({version})")


def test_plaintext_listener_refuses_even_a_known_username(mosq: MosquittoHarness) -> None:
    port = mosq.broker.plaintext_port
    assert port is not None
    command = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", "cam1", "-P", "x", "-t", "things/cam1/t"]
    result = subprocess.run([*command, "-m", "hi", "-q", "1"], capture_output=True, text=True, timeout=20)
    assert result.returncode != 0 and "not authorised" in result.stderr


def test_a_device_cannot_take_another_devices_client_id(
    mosq: MosquittoHarness, client: Callable[..., MqttDevice], creds: dict[str, Creds]
) -> None:
    victim = connected(client, creds["cam2"], mosq.port)
    claimer = connected(client, creds["cam1"], mosq.port, client_id="cam2")
    # The id is replaced by the certificate's name, so the victim is not taken over and the claimer is cam1.
    assert not victim.disconnected.wait(1.0)
    assert mosq.wait_until(lambda: {"cam1", "cam2"} <= mosq.broker.connected_things())
    claimer.close()


def test_ingestion_stores_what_devices_publish_and_nothing_else(
    mosq: MosquittoHarness, client: Callable[..., MqttDevice], creds: dict[str, Creds]
) -> None:
    cam1 = connected(client, creds["cam1"], mosq.port)
    cam1.publish("things/cam1/telemetry", b'{"t": 1}')
    cam1.publish("things/cam2/telemetry", b'{"forged": 1}')  # refused by the ACL
    cam1.publish("things/cam1/events/motion", b"{}")
    first, second = mosq.next_message(), mosq.next_message()
    assert (first.thing, first.topic, first.payload) == ("cam1", "things/cam1/telemetry", b'{"t": 1}')
    assert (second.thing, second.topic) == ("cam1", "things/cam1/events/motion")
    assert mosq.messages.empty()


def test_publish_goes_through_the_internal_client_only_where_it_may_write(
    mosq: MosquittoHarness, client: Callable[..., MqttDevice], creds: dict[str, Creds]
) -> None:
    cam1 = connected(client, creds["cam1"], mosq.port)
    assert cam1.subscribe("things/cam1/commands/#") == 1
    mosq.call(mosq.broker.publish("things/cam1/commands/reboot", b"now"))
    assert cam1.next_message().payload == b"now"
    with pytest.raises(ValueError, match="commands and updates"):
        mosq.call(mosq.broker.publish("things/cam1/telemetry", b"forged"))


def test_the_internal_client_cannot_read_device_commands(mosq: MosquittoHarness) -> None:
    acl = mosq.broker.acl_path.read_text()
    block = acl.split(f"user {INTERNAL_IDENTITY}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "topic read things/+/telemetry" in block
    assert not any(line.startswith(("topic read things/+/commands", "topic readwrite")) for line in block)
    assert not any(line.endswith(" #") for line in block)


def test_acl_reload_after_a_policy_change_applies_to_open_sessions(
    mosq: MosquittoHarness,
    engine: PolicyEngine,
    client: Callable[..., MqttDevice],
    creds: dict[str, Creds],
    restore_world: None,
) -> None:
    cam1 = connected(client, creds["cam1"], mosq.port)
    assert cam1.subscribe("things/cam1/commands/#") == 1
    no_reboot = parse_policy_document(
        {"statements": [{"effect": "deny", "actions": ["receive"], "resources": ["things/cam1/commands/reboot"]}]}
    )
    world = default_world()
    engine.replace_world(
        PolicyWorld(
            things=world.things,
            groups=world.groups,
            policies={**world.policies, "no-reboot": no_reboot},
            group_policies=world.group_policies,
            thing_policies={"cam1": ("no-reboot",)},
        )
    )
    mosq.call(mosq.broker.policies_changed())
    mosq.call(mosq.broker.publish("things/cam1/commands/reboot", b"denied"))
    mosq.call(mosq.broker.publish("things/cam1/commands/ping", b"sentinel"))
    seen = cam1.messages_until("things/cam1/commands/ping")
    assert [m.topic for m in seen] == ["things/cam1/commands/ping"]


def test_a_disabled_device_is_dropped_and_cannot_come_back(
    mosq: MosquittoHarness,
    engine: PolicyEngine,
    mpki: Pki,
    client: Callable[..., MqttDevice],
    creds: dict[str, Creds],
    restore_world: None,
) -> None:
    cam3 = connected(client, creds["cam3"], mosq.port, clean_session=False)
    assert cam3.subscribe("things/cam3/commands/#") == 1
    assert mosq.wait_until(lambda: "cam3" in mosq.broker.connected_things())
    # What `thingward device disable` does: the certificate goes into the CRL, the thing out of the world.
    mpki.write_crl(creds["cam3"].serial)
    engine.replace_world(default_world(("cam1", "cam2")))
    mosq.call(mosq.broker.policies_changed())
    mosq.run(mosq.broker.reload_crl)
    dropped = mosq.call(mosq.broker.disconnect("cam3"), timeout=15)
    assert dropped == 1
    assert cam3.disconnected.wait(5)
    assert mosq.wait_until(lambda: "cam3" not in mosq.broker.connected_things())
    again = client(creds["cam3"], mosq.port).connect()
    assert not again.accepted, again.detail


@pytest.mark.parametrize("disabled", [True, False], ids=["disabled", "revoked-still-in-the-world"])
def test_a_dropped_devices_will_is_not_published(
    disabled: bool,
    mosq: MosquittoHarness,
    engine: PolicyEngine,
    client: Callable[..., MqttDevice],
    creds: dict[str, Creds],
    restore_world: None,
) -> None:
    will = ("things/cam2/telemetry", b"last words", False)
    cam2 = connected(client, creds["cam2"], mosq.port, will=will)
    assert mosq.wait_until(lambda: "cam2" in mosq.broker.connected_things())
    if disabled:
        engine.replace_world(default_world(("cam1", "cam3")))  # a disabled thing leaves the world
        mosq.call(mosq.broker.policies_changed())
    assert mosq.call(mosq.broker.disconnect("cam2"), timeout=15) == 1
    assert cam2.disconnected.wait(5)
    # Ingestion sees what the will would have been published to; a sentinel from cam1 comes after it.
    cam1 = connected(client, creds["cam1"], mosq.port)
    cam1.publish("things/cam1/telemetry", b"sentinel")
    seen = []
    while True:
        message = mosq.next_message()
        seen.append(message.payload)
        if message.payload == b"sentinel":
            break
    assert b"last words" not in seen


def test_mosquitto_is_restarted_when_it_dies_and_ingestion_resumes(
    mosq: MosquittoHarness, client: Callable[..., MqttDevice], creds: dict[str, Creds]
) -> None:
    before = mosq.broker.restarts
    old_pid = mosq.run(lambda: mosq.broker.pid)
    os.kill(old_pid, signal.SIGKILL)  # the process this module's harness started
    assert mosq.wait_until(lambda: mosq.broker.restarts == before + 1, timeout=15)
    assert mosq.run(lambda: mosq.broker.pid) != old_pid
    # The internal client is made anew (a fresh certificate) after the restart; then messages flow again.
    cam1 = connected(client, creds["cam1"], mosq.port)
    while not mosq.messages.empty():
        mosq.messages.get_nowait()
    sent = [f"after-restart-{i}".encode() for i in range(30)]
    for payload in sent:
        cam1.publish("things/cam1/telemetry", payload)
        try:
            message = mosq.next_message(timeout=0.5)
        except queue.Empty:
            continue  # the internal client is still reconnecting: send another
        assert message.topic == "things/cam1/telemetry" and message.payload in sent
        return
    pytest.fail("ingestion did not resume after mosquitto restarted")


def test_raw_mosquitto_for_benchmarks_has_mtls_and_no_acl(
    mpki: Pki, creds: dict[str, Creds], client: Callable[..., MqttDevice], tmp_path: Path
) -> None:
    require_mosquitto()

    async def start() -> tuple[MosquittoProcess, int]:
        return await raw_mosquitto(tmp_path / "raw", mpki.tls)

    harness_loop = asyncio.new_event_loop()
    try:
        process, port = harness_loop.run_until_complete(start())
        try:
            assert not client(None, port, client_id="anyone").connect().accepted
            cam1 = connected(client, creds["cam1"], port)
            assert cam1.subscribe("things/cam2/#") == 1
            cam1.publish("things/cam2/telemetry", b"no ACL here")  # the reference does no authorization
            assert cam1.next_message().payload == b"no ACL here"
            cam1.close()
        finally:
            harness_loop.run_until_complete(process.stop())
    finally:
        harness_loop.close()


def test_an_unknown_broker_setting_is_refused_with_the_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from thingward.cli.main import app
    from thingward.config import load_settings
    from thingward.errors import ConfigError

    monkeypatch.setenv("THINGWARD_MQTT__BROKER", "rabbit")
    with pytest.raises(ConfigError, match="embedded, mosquitto"):
        load_settings(tmp_path)
    monkeypatch.delenv("THINGWARD_MQTT__BROKER")
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--broker", "rabbit", "--json"])
    assert result.exit_code != 0 and "embedded, mosquitto" in result.stderr
