"""`thingward serve` with `[mqtt] broker = "mosquitto"`, as a user runs it: devices enrolled over the API
talk to the managed Mosquitto, ingestion stores what they send in the same registry as the embedded broker,
a policy changed with the CLI reaches Mosquitto's ACL, and a revoked device's session is dropped."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.mosquitto import require_mosquitto
from lab.served import serving, wait_for
from test_journey import Served, stored_count
from thingward.cli.main import app
from thingward.device.client import Device, DeviceConnectError

SERVER_ENV = {"THINGWARD_MQTT__BROKER": "mosquitto", "THINGWARD_AUDIT__INTERVAL_MINUTES": "0"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_mosquitto()
    from thingward.platform import init_data_dir

    data_dir = tmp_path_factory.mktemp("mosquitto-served") / "data"
    init_data_dir(data_dir)
    with serving(data_dir, {**os.environ, **SERVER_ENV}) as server:
        yield Served(data_dir, server.mqtt_host, server.mqtt_port, server.api, server.ca, server.process)


def cli(data_dir: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def enroll(served: Served, name: str, tmp_path: Path) -> Device:
    token = cli(served.data_dir, "device", "add", name)["enrollment_token"]
    out = tmp_path / name
    args = ["device", "enroll", "--api", served.api, "--token", token, "--ca-certificate", str(served.ca)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    return Device.from_dir(out, name, host=served.mqtt_host, port=served.mqtt_port)


def kinds(served: Served, name: str) -> dict[str, int]:
    messages = cli(served.data_dir, "device", "messages", name)["messages"]
    return {kind: sum(1 for m in messages if m["kind"] == kind) for kind in ("telemetry", "event")}


def test_the_server_runs_mosquitto_with_the_generated_files(served: Served) -> None:
    work_dir = served.data_dir / "mosquitto"
    config = (work_dir / "mosquitto.conf").read_text()
    assert f"listener {served.mqtt_port} " in config and "require_certificate true" in config
    assert "user thingward:internal" in (work_dir / "mosquitto.acl").read_text()


def test_messages_are_stored_and_a_policy_change_reaches_mosquitto(served: Served, tmp_path: Path) -> None:
    device = enroll(served, "cam-m1", tmp_path)
    device.connect()
    try:
        device.publish_telemetry({"t": 1}).wait_for_publish(5)
        device.publish_event("motion", {"zone": "door"}).wait_for_publish(5)
        assert wait_for(lambda: stored_count(served, "cam-m1") == 2, 10)
        acl = served.data_dir / "mosquitto" / "mosquitto.acl"
        assert "user cam-m1\n" in acl.read_text()

        policy = tmp_path / "quiet.json"
        policy.write_text(
            json.dumps(
                {"statements": [{"effect": "deny", "actions": ["publish"], "resources": ["things/cam-m1/telemetry"]}]}
            )
        )
        cli(served.data_dir, "policy", "add", "quiet", str(policy))
        cli(served.data_dir, "policy", "attach", "quiet", "--thing", "cam-m1")
        assert wait_for(lambda: "topic deny things/cam-m1/telemetry" in acl.read_text(), 10)
        # The ACL is written before the SIGHUP: send pairs until one shows the telemetry refused (bounded),
        # then every later pair must show the same.
        for attempt in range(20):
            stored = kinds(served, "cam-m1")
            device.publish_telemetry({"t": attempt}).wait_for_publish(5)
            device.publish_event("motion", {"attempt": attempt}).wait_for_publish(5)
            assert wait_for(lambda: kinds(served, "cam-m1")["event"] == stored["event"] + 1, 10)
            if kinds(served, "cam-m1")["telemetry"] == stored["telemetry"]:
                break
        else:
            pytest.fail("telemetry was still stored after the deny reached the ACL file")
        stored = kinds(served, "cam-m1")
        for attempt in range(3):
            device.publish_telemetry({"after": attempt}).wait_for_publish(5)
        device.publish_event("motion", {"zone": "sentinel"}).wait_for_publish(5)
        assert wait_for(lambda: kinds(served, "cam-m1")["event"] == stored["event"] + 1, 10)
        assert kinds(served, "cam-m1")["telemetry"] == stored["telemetry"]
    finally:
        device.close()


def test_a_revoked_device_is_dropped_and_refused(served: Served, tmp_path: Path) -> None:
    device = enroll(served, "cam-m2", tmp_path)
    device.connect()
    dropped = threading.Event()
    client = device.mqtt_client
    previous = client.on_disconnect

    def on_disconnect(*args: object) -> None:
        dropped.set()
        if previous is not None:
            previous(*args)

    client.on_disconnect = on_disconnect
    try:
        cli(served.data_dir, "device", "revoke", "cam-m2")
        assert dropped.wait(10), "the revoked device's session was not dropped"
        client.reconnect_delay_set(min_delay=60, max_delay=60)  # no reconnection behind the test's back
    finally:
        device.close()
    again = Device.from_dir(tmp_path / "cam-m2", "cam-m2", host=served.mqtt_host, port=served.mqtt_port)
    with pytest.raises(DeviceConnectError):
        again.connect(timeout=5)
