"""The whole journey through the real doors: `thingward` CLI processes, a served broker and API, real clients.

Everything here goes over real TLS on loopback: the server is `thingward serve --json` in its own process,
devices enroll with `thingward device enroll`, and talk with paho-mqtt and mosquitto_pub/sub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lab.served import THINGWARD, serving, wait_for
from thingward.device.client import Device, DeviceConnectError


def cli(data_dir: Path, *args: str, check: bool = True) -> dict:
    result = subprocess.run(
        [*THINGWARD, *args, "--data-dir", str(data_dir), "--json"], capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise AssertionError(f"thingward {' '.join(args)} failed: {result.stderr}")
    return {
        "returncode": result.returncode,
        "stderr": result.stderr,
        **json.loads(result.stdout.strip().splitlines()[-1]),
    }


@dataclass
class Served:
    data_dir: Path
    mqtt_host: str
    mqtt_port: int
    api: str
    ca: Path
    process: subprocess.Popen[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("journey") / "data"
    result = subprocess.run(
        [*THINGWARD, "init", "--data-dir", str(data_dir), "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ca_certificate"].endswith("ca.crt")
    with serving(data_dir) as server:
        yield Served(data_dir, server.mqtt_host, server.mqtt_port, server.api, server.ca, server.process)


def enroll(served: Served, name: str, tmp_path: Path) -> Path:
    added = cli(served.data_dir, "device", "add", name)
    assert added["name"] == name and added["enrollment_token"].startswith(f"{name}.")
    out = tmp_path / name
    enrolled = subprocess.run(
        [
            *THINGWARD,
            "device",
            "enroll",
            "--api",
            served.api,
            "--token",
            added["enrollment_token"],
            "--ca-certificate",
            str(served.ca),
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    body = json.loads(enrolled.stdout)
    assert body == {"name": name, "certificate": str(out / "device.crt"), "key": str(out / "device.key")}
    return out


def connect(served: Served, name: str, directory: Path) -> Device:
    device = Device.from_dir(directory, name, host=served.mqtt_host, port=served.mqtt_port)
    device.connect(timeout=10)
    return device


def stored_count(served: Served, name: str) -> int:
    """Read the registry file directly: polling through a CLI process a few times a second would be slow."""
    from thingward.ingest.store import count_messages
    from thingward.platform import Platform
    from thingward.registry.things import get_thing

    platform = Platform.open(served.data_dir)
    try:
        with platform.db.read() as session:
            return count_messages(session, get_thing(session, name))
    finally:
        platform.close()


def reported_version(served: Served, name: str) -> str | None:
    from thingward.platform import Platform
    from thingward.registry.device_state import latest_report

    platform = Platform.open(served.data_dir)
    try:
        with platform.db.read() as session:
            latest = latest_report(session, name)
        return latest.report.firmware_version if latest else None
    finally:
        platform.close()


def test_enrolled_device_publishes_and_message_is_stored(served: Served, tmp_path: Path) -> None:
    directory = enroll(served, "cam-store", tmp_path)
    device = connect(served, "cam-store", directory)
    try:
        device.publish_telemetry({"temperature_c": 41.5}).wait_for_publish(5)
        device.publish_event("motion", {"zone": "front door"}).wait_for_publish(5)
    finally:
        device.close()

    assert wait_for(lambda: stored_count(served, "cam-store") == 2, 10)

    def stored() -> list[dict]:
        return cli(served.data_dir, "device", "messages", "cam-store")["messages"]

    topics = sorted(m["topic"] for m in stored())
    assert topics == ["things/cam-store/events/motion", "things/cam-store/telemetry"]
    assert any('"temperature_c":41.5' in m["payload"] for m in stored())


def test_mosquitto_clients_with_device_certificate(served: Served, tmp_path: Path) -> None:
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto-clients not installed")
    directory = enroll(served, "cam-mosq", tmp_path)
    common = [
        "-h",
        served.mqtt_host,
        "-p",
        str(served.mqtt_port),
        "--cafile",
        str(directory / "ca.crt"),
        "-i",
        "cam-mosq",
    ]
    ok = subprocess.run(
        [
            "mosquitto_pub",
            *common,
            "--cert",
            str(directory / "device.crt"),
            "--key",
            str(directory / "device.key"),
            "-t",
            "things/cam-mosq/telemetry",
            "-m",
            '{"via":"mosquitto_pub"}',
            "-q",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert ok.returncode == 0, ok.stderr
    no_cert = subprocess.run(
        ["mosquitto_pub", *common, "-t", "things/cam-mosq/telemetry", "-m", "x", "-q", "1"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert no_cert.returncode != 0
    assert wait_for(lambda: stored_count(served, "cam-mosq") == 1, 10)
    assert "mosquitto_pub" in cli(served.data_dir, "device", "messages", "cam-mosq")["messages"][0]["payload"]


def test_device_cannot_read_another_devices_topics(served: Served, tmp_path: Path) -> None:
    victim = connect(served, "cam-victim", enroll(served, "cam-victim", tmp_path))
    spy_dir = enroll(served, "cam-spy", tmp_path)
    received: list[str] = []
    granted: list[list[bool]] = []
    subscribed = threading.Event()
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-spy")
    spy.tls_set(
        ca_certs=str(spy_dir / "ca.crt"), certfile=str(spy_dir / "device.crt"), keyfile=str(spy_dir / "device.key")
    )
    spy.on_message = lambda _c, _u, msg: received.append(msg.topic)

    def on_subscribe(_c, _u, _mid, codes, _p) -> None:
        granted.append([not rc.is_failure for rc in codes])
        subscribed.set()

    spy.on_subscribe = on_subscribe
    spy.connect(served.mqtt_host, served.mqtt_port)
    spy.loop_start()
    try:
        for topic_filter in ["things/cam-victim/#", "things/+/telemetry", "#", "+/cam-victim/#"]:
            subscribed.clear()
            spy.subscribe(topic_filter)
            assert subscribed.wait(5), f"no SUBACK for {topic_filter}"
        assert granted == [[False]] * 4
        victim.publish_telemetry({"secret": 1}).wait_for_publish(5)
        victim.publish("things/cam-victim/telemetry", b"retained", qos=1, retain=True).wait_for_publish(5)
        spy.publish("things/cam-victim/commands/unlock", b"open", qos=1).wait_for_publish(5)
        time.sleep(1.0)  # a delivery, if the broker wrongly made one, would arrive well within this
        assert received == []
    finally:
        spy.loop_stop()
        spy.disconnect()
        victim.close()
    explained = cli(served.data_dir, "policy", "explain", "cam-spy", "subscribe", "things/cam-victim/#")
    assert explained["decision"] == "deny"


def test_client_id_other_than_certificate_refused(served: Served, tmp_path: Path) -> None:
    directory = enroll(served, "cam-id", tmp_path)
    impostor = Device(
        "cam-someone-else",
        directory / "device.crt",
        directory / "device.key",
        directory / "ca.crt",
        host=served.mqtt_host,
        port=served.mqtt_port,
    )
    with pytest.raises(DeviceConnectError):
        impostor.connect(timeout=5)


def test_revoked_device_is_dropped_within_a_second_and_refused_after(served: Served, tmp_path: Path) -> None:
    directory = enroll(served, "cam-revoke", tmp_path)
    device = connect(served, "cam-revoke", directory)
    try:
        revoked = cli(served.data_dir, "device", "revoke", "cam-revoke")
        assert len(revoked["revoked_serials"]) == 1
        started = time.monotonic()
        assert wait_for(lambda: not device.connected, 3), "live session not dropped"
        # The watcher polls every 0.25 s; the issue asks for under a second.
        assert time.monotonic() - started < 1.5
    finally:
        device.close()
    again = Device.from_dir(directory, "cam-revoke", host=served.mqtt_host, port=served.mqtt_port)
    with pytest.raises(DeviceConnectError):
        again.connect(timeout=5)


def test_disabled_device_is_dropped_and_refused(served: Served, tmp_path: Path) -> None:
    directory = enroll(served, "cam-disable", tmp_path)
    device = connect(served, "cam-disable", directory)
    try:
        cli(served.data_dir, "device", "disable", "cam-disable")
        assert wait_for(lambda: not device.connected, 3)
    finally:
        device.close()
    with pytest.raises(DeviceConnectError):
        connect(served, "cam-disable", directory)


def test_metrics_and_openapi_are_served(served: Served) -> None:
    import httpx

    from thingward.device.enroll import server_context

    with httpx.Client(verify=server_context(served.ca), timeout=10) as client:
        metrics = client.get(f"{served.api}/metrics").text
        schema = client.get(f"{served.api}/api/openapi.json").json()
    assert "thingward_mqtt_denials_total" in metrics
    assert "/api/v1/enroll" in schema["paths"]


def test_cli_errors_are_one_line_and_json(served: Served) -> None:
    result = subprocess.run(
        [*THINGWARD, "device", "revoke", "no-such-cam", "--data-dir", str(served.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "no thing named 'no-such-cam': see 'thingward device list'"}
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


def test_plaintext_connection_to_tls_port_refused(served: Served) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-plain")
    refused = False
    try:
        client.connect(served.mqtt_host, served.mqtt_port, keepalive=5)
        rc = client.loop(timeout=3)
        refused = rc != 0 or not client.is_connected()
        if not refused:
            time.sleep(1)
            client.loop(timeout=1)
            refused = not client.is_connected()
    except OSError:
        refused = True
    finally:
        client.disconnect()
    assert refused
    assert os.environ.get("THINGWARD_MQTT__PLAINTEXT_PORT") is None


def test_simulate_enrolls_and_runs_n_cameras(served: Served) -> None:
    result = subprocess.run(
        [
            *THINGWARD,
            "simulate",
            "--devices",
            "3",
            "--duration",
            "3",
            "--prefix",
            "simcam",
            "--api",
            served.api,
            "--mqtt",
            f"mqtts://{served.mqtt_host}:{served.mqtt_port}",
            "--data-dir",
            str(served.data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    cameras = json.loads(result.stdout.strip().splitlines()[-1])["cameras"]
    assert sorted(cameras) == ["simcam-1", "simcam-2", "simcam-3"]
    for stats in cameras.values():
        assert stats["telemetry_sent"] >= 1
        assert stats["stored"] == stats["telemetry_sent"] + stats["events_sent"]


def test_enroll_reads_the_token_from_the_environment(served: Served, tmp_path: Path) -> None:
    # Keeps the secret out of the process list and shell history.
    added = cli(served.data_dir, "device", "add", "cam-env")
    out = tmp_path / "cam-env"
    env = {**os.environ, "CAM_TOKEN": added["enrollment_token"]}
    base = [*THINGWARD, "device", "enroll", "--api", served.api, "--ca-certificate", str(served.ca), "--out", str(out)]
    missing = subprocess.run(
        [*base, "--token-env", "NO_SUCH_VAR", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert missing.returncode == 1 and "NO_SUCH_VAR is not set" in json.loads(missing.stdout)["error"]
    ok = subprocess.run(
        [*base, "--token-env", "CAM_TOKEN", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["name"] == "cam-env"
    assert added["enrollment_token"] not in " ".join(base)


def test_device_reports_its_state_and_the_audit_judges_it(served: Served, tmp_path: Path) -> None:
    from thingward.device.state import DeviceState, ListeningPorts

    device = connect(served, "cam-state", enroll(served, "cam-state", tmp_path))
    cli(served.data_dir, "model", "set", "cam-j", "--tcp", "443,8883", "--udp", "5353")
    cli(served.data_dir, "ota", "advisory", "add", "--id", "CVE-2026-4242", "--model", "cam-j", "--affected", "<2.1.0")
    try:
        state = DeviceState("cam-j", "2.0.9", ListeningPorts(tcp=(23, 443, 8080), udp=(5353,)), "provisioned")
        device.publish_state(state).wait_for_publish(5)
        assert wait_for(lambda: reported_version(served, "cam-state") == "2.0.9", 5)
        # A malformed report afterwards is dropped; the last good one stays.
        device.publish("things/cam-state/state", b'{"ports": {"tcp": ["telnet"]}}', qos=1).wait_for_publish(5)
        time.sleep(0.5)
    finally:
        device.close()
    shown = cli(served.data_dir, "device", "show", "cam-state")["reported_state"]
    assert shown["firmware"] == {"model": "cam-j", "version": "2.0.9"}
    assert shown["ports"] == {"tcp": [23, 443, 8080], "udp": [5353]}
    affected = cli(served.data_dir, "ota", "advisory", "devices", "CVE-2026-4242")
    assert affected["devices"] == [{"thing": "cam-state", "model": "cam-j", "version": "2.0.9"}]

    report = cli(served.data_dir, "audit", check=False)
    by_id = {c["id"]: c for c in report["checks"]}
    ports = [
        (f["severity"], f["message"]) for f in by_id["DEVICE_OPEN_PORTS"]["findings"] if "cam-state" in f["resource"]
    ]
    assert ports == [
        ("critical", "Telnet listening on TCP 23: a plaintext login"),
        ("medium", "TCP 8080 is not in model cam-j's allowed ports"),
    ]
    firmware = [f["message"] for f in by_id["FIRMWARE_ADVISORY"]["findings"] if "cam-state" in f["resource"]]
    assert firmware == ["cam-j firmware 2.0.9 is affected by CVE-2026-4242 (affected: <2.1.0)"]
    # The server is running, so the live-session checks are judged, not skipped.
    assert by_id["REVOKED_BUT_CONNECTED"]["status"] != "not_applicable"


def test_a_cloned_certificate_used_from_two_addresses_is_flagged(served: Served, tmp_path: Path) -> None:
    directory = enroll(served, "cam-clone", tmp_path)

    def copy(source_address: str) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cam-clone")
        client.tls_set(
            ca_certs=str(directory / "ca.crt"),
            certfile=str(directory / "device.crt"),
            keyfile=str(directory / "device.key"),
        )
        connected = threading.Event()
        client.on_connect = lambda *_args: connected.set()
        client.connect(served.mqtt_host, served.mqtt_port, bind_address=source_address)
        client.loop_start()
        assert connected.wait(5), f"copy at {source_address} did not connect"
        return client

    clients = []
    try:
        for source in ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"]:  # each copy closes the one before
            clients.append(copy(source))
            time.sleep(0.3)

        def flagged() -> list[str]:
            report = cli(served.data_dir, "audit", check=False)
            check = next(c for c in report["checks"] if c["id"] == "SHARED_IDENTITY")
            return [f["message"] for f in check["findings"] if f["resource"] == "thing:cam-clone"]

        live = served.data_dir / "run" / "live.json"
        assert wait_for(lambda: live.exists() and live.read_text().count('"old_peer"') >= 3, 10, interval=0.2)
        # Kicked copies reconnect and kick back, as real clones do: the count only grows.
        [message] = flagged()
        count, _, rest = message.partition(" ")
        assert int(count) >= 3 and rest == "session takeovers in 10 min from 127.0.0.1, 127.0.0.2"
    finally:
        for client in clients:
            client.loop_stop()
            client.disconnect()
    assert stat_mode(served.data_dir / "run" / "live.json") == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_device_report_command_sends_this_hosts_listening_ports(served: Served, tmp_path: Path) -> None:
    import socket

    directory = enroll(served, "cam-agent", tmp_path)
    # A listener on all addresses (so not loopback-only), open only for this test; it accepts nothing.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = subprocess.run(
            [
                *THINGWARD,
                "device",
                "report",
                "--dir",
                str(directory),
                "--mqtt",
                f"{served.mqtt_host}:{served.mqtt_port}",
                "--model",
                "cam-a",
                "--firmware-version",
                "3.1.0",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    sent = json.loads(result.stdout)
    assert sent["name"] == "cam-agent" and port in sent["ports"]["tcp"]
    assert wait_for(lambda: reported_version(served, "cam-agent") == "3.1.0", 5)
    shown = cli(served.data_dir, "device", "show", "cam-agent")["reported_state"]
    assert port in shown["ports"]["tcp"]


def test_device_report_without_an_enrolled_identity_says_so(tmp_path: Path) -> None:
    args = ["--dir", str(tmp_path), "--mqtt", "127.0.0.1:1", "--model", "m", "--firmware-version", "1"]
    result = subprocess.run(
        [*THINGWARD, "device", "report", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot read the device certificate" in result.stderr and "enroll first" in result.stderr
