"""The audit against a real served platform: the server's audit schedule stores runs, and mitigation
acts on live devices over real mutual TLS (a quarantined camera can no longer publish telemetry but
still receives its commands and updates; undo gives its groups back).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from lab.served import serving, wait_for
from test_journey import Served, connect, stored_count
from thingward.audit.model import finding_id
from thingward.cli.main import app
from thingward.device.client import DeviceConnectError
from thingward.device.enroll import server_context
from thingward.platform import Platform, init_data_dir
from thingward.registry.audit_log import list_events

# A certificate of 20 days is inside the audit's 30-day horizon, so every enrolled device has a finding
# (DEVICE_CERT_EXPIRING on thing:NAME) that mitigation can act on.
SERVER_ENV = {"THINGWARD_AUDIT__INTERVAL_MINUTES": "0.005", "THINGWARD_PKI__DEVICE_CERTIFICATE_DAYS": "20"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("audit-served") / "data"
    init_data_dir(data_dir)
    with serving(data_dir, {**os.environ, **SERVER_ENV}) as server:
        yield Served(data_dir, server.mqtt_host, server.mqtt_port, server.api, server.ca, server.process)


def cli(data_dir: Path, *args: str) -> dict:
    """The CLI in this process (a process per command costs seconds); the server is a process of its own."""
    result = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def enroll(served: Served, name: str, tmp_path: Path) -> Path:
    token = cli(served.data_dir, "device", "add", name)["enrollment_token"]
    out = tmp_path / name
    args = ["device", "enroll", "--api", served.api, "--token", token, "--ca-certificate", str(served.ca)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    return out


def publish_denials(served: Served) -> float:
    with httpx.Client(verify=server_context(served.ca), timeout=10) as client:
        text = client.get(f"{served.api}/metrics").text
    for line in text.splitlines():
        if line.startswith('thingward_mqtt_denials_total{action="publish"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def audit_events(served: Served, action: str) -> list[dict]:
    platform = Platform.open(served.data_dir)
    try:
        with platform.db.read() as session:
            return [
                {"target": e.target, **json.loads(e.detail)} for e in list_events(session, 1000) if e.action == action
            ]
    finally:
        platform.close()


def test_the_server_audits_on_schedule_and_stores_the_runs(served: Served) -> None:
    def scheduled() -> list[dict]:
        runs = cli(served.data_dir, "audit", "history")["runs"]
        return [r for r in runs if r["triggered_by"] == "server:schedule"]

    assert wait_for(lambda: len(scheduled()) >= 2, 20, interval=0.3), "no scheduled runs stored"
    newest = scheduled()[0]
    assert newest["summary"]["findings"]["medium"] >= 1  # the CA key of a plain init is not encrypted
    report = cli(served.data_dir, "audit")
    assert report["changes"]["previous_run"]["triggered_by"] == "server:schedule"


def test_quarantine_stops_telemetry_keeps_commands_and_undo_restores(served: Served, tmp_path: Path) -> None:
    operator_policy = tmp_path / "operator.json"
    operator_policy.write_text(
        json.dumps(
            {
                "statements": [
                    {"effect": "allow", "actions": ["connect"], "resources": ["${thing.name}"]},
                    {
                        "effect": "allow",
                        "actions": ["publish"],
                        "resources": ["things/cam-q/commands/#", "things/cam-q/update/#"],
                    },
                ]
            }
        )
    )
    cli(served.data_dir, "policy", "add", "operator", str(operator_policy))
    cli(served.data_dir, "group", "add", "operators")
    cli(served.data_dir, "policy", "attach", "operator", "--group", "operators")
    operator_dir = enroll(served, "operator", tmp_path)
    cli(served.data_dir, "group", "add-thing", "operators", "operator")
    camera_dir = enroll(served, "cam-q", tmp_path)
    received: list[tuple[str, bytes]] = []
    got = threading.Event()

    def on_command(topic: str, payload: bytes) -> None:
        received.append((topic, payload))
        got.set()

    camera = connect(served, "cam-q", camera_dir)
    camera.on_command = on_command
    operator = None
    try:
        camera.publish_telemetry({"t": 1}).wait_for_publish(5)
        assert wait_for(lambda: stored_count(served, "cam-q") == 1, 10)

        report = cli(served.data_dir, "audit")
        fid = finding_id("DEVICE_CERT_EXPIRING", "thing:cam-q")
        assert fid in {f["id"] for c in report["checks"] for f in c["findings"]}
        before = publish_denials(served)
        done = cli(served.data_dir, "audit", "mitigate", fid, "--action", "quarantine")
        assert done["thing"] == "cam-q" and done["groups"] == ["default"] and not done["undone"]
        explained = cli(served.data_dir, "policy", "explain", "cam-q", "publish", "things/cam-q/telemetry")
        assert explained["decision"] == "deny"

        def denied_now() -> bool:
            camera.publish_telemetry({"t": 2}).wait_for_publish(5)
            return publish_denials(served) > before

        assert wait_for(denied_now, 10, interval=0.3), "telemetry of a quarantined camera was not refused"
        kept = stored_count(served, "cam-q")
        for n in range(3):
            camera.publish_telemetry({"t": 10 + n}).wait_for_publish(5)
        assert camera.connected  # refused, not dropped: it can still take its commands and updates

        operator = connect(served, "operator", operator_dir)
        operator.publish("things/cam-q/commands/reboot", b"now", qos=1).wait_for_publish(5)
        assert got.wait(5), "a quarantined camera no longer receives its commands"
        got.clear()
        camera.subscribe("things/cam-q/update/#", qos=1)

        def update_arrives() -> bool:
            # Repeated until the SUBSCRIBE has been granted: an update sent before it is not delivered.
            operator.publish("things/cam-q/update/firmware", b"v2", qos=1).wait_for_publish(5)
            return got.wait(0.5)

        assert wait_for(update_arrives, 10), "a quarantined camera no longer receives its updates"
        assert ("things/cam-q/update/firmware", b"v2") in received
        assert ("things/cam-q/commands/reboot", b"now") in received
        assert not wait_for(lambda: stored_count(served, "cam-q") > kept, 1.5)
        assert publish_denials(served) >= before + 4

        undone = cli(served.data_dir, "audit", "mitigate", fid, "--action", "quarantine", "--undo")
        assert undone["undone"] and undone["groups"] == ["default"]

        def stored_again() -> bool:
            camera.publish_telemetry({"t": 100}).wait_for_publish(5)
            return wait_for(lambda: stored_count(served, "cam-q") > kept, 0.5)

        assert wait_for(stored_again, 10), "undo did not give the camera its telemetry back"
    finally:
        camera.close()
        if operator is not None:
            operator.close()
    quarantined = audit_events(served, "audit.mitigate")
    assert {"target": "thing:cam-q", "action": "quarantine", "finding": fid}.items() <= quarantined[-1].items()
    assert audit_events(served, "audit.mitigate.undo")[0]["target"] == "thing:cam-q"
    removed = [e for e in audit_events(served, "group.remove_thing") if e["thing"] == "cam-q"]
    assert {e["target"] for e in removed} == {"group:default", "group:quarantine"}


def test_disable_drops_the_device_and_undo_enables_it(served: Served, tmp_path: Path) -> None:
    camera = connect(served, "cam-d", enroll(served, "cam-d", tmp_path))
    fid = finding_id("DEVICE_CERT_EXPIRING", "thing:cam-d")
    try:
        done = cli(served.data_dir, "audit", "mitigate", fid, "--action", "disable")
        assert len(done["revoked_serials"]) == 1 and "enrollment" in done["note"]
        assert wait_for(lambda: not camera.connected, 3), "the disabled camera kept its session"
    finally:
        camera.close()
    with pytest.raises(DeviceConnectError):
        connect(served, "cam-d", tmp_path / "cam-d")
    undone = cli(served.data_dir, "audit", "mitigate", fid, "--action", "disable", "--undo")
    assert undone["undone"] and undone["thing"] == "cam-d"
    assert cli(served.data_dir, "device", "show", "cam-d")["disabled"] is False
    assert [e["action"] for e in audit_events(served, "audit.mitigate") if e["target"] == "thing:cam-d"] == ["disable"]
