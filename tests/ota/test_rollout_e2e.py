"""Rollouts end to end: `thingward serve` as a process of its own, the CLI in this one, and device agents
over real MQTT with mutual TLS, downloading real TUF-signed images over HTTPS into A/B slots.

A few devices per test and waves that need no waiting: each test runs in seconds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.served import serving, wait_for
from thingward.cli.main import app
from thingward.device.client import Device
from thingward.device.enroll import enroll
from thingward.device.jobs import ImageCheck, JobAgent
from thingward.device.state import DeviceState
from thingward.device.update import FirmwareUpdater
from thingward.ota import firmware
from thingward.ota.job_protocol import StatusReport, job_topic, parse_job_document, status_topic
from thingward.ota.keys import create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform, init_data_dir
from thingward.registry import device_state, things
from thingward.registry.audit_log import Actor

ACTOR = Actor("test", "pytest")
SETTLE = 60.0  # seconds a rollout of a handful of devices may take at most on a loaded machine


@dataclass
class Served:
    data_dir: Path
    host: str
    port: int
    api: str
    ca: Path
    root: bytes


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("rollout-e2e")
    data_dir = base / "data"
    init_data_dir(data_dir)
    keys = base / "ota-keys"
    create_key_set(keys, root_keys=1, root_threshold=1)
    repo = OtaRepository.initialise(OtaRepository.for_data_dir(data_dir).path, keys)
    root = (repo.metadata_dir / "1.root.json").read_bytes()
    with serving(data_dir, dict(os.environ)) as server:
        yield Served(data_dir, server.mqtt_host, server.mqtt_port, server.api, server.ca, root)


def cli(served: Served, *args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--data-dir", str(served.data_dir), "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def open_platform(served: Served) -> Platform:
    return Platform.open(served.data_dir)


def publish(served: Served, tmp_path: Path, model: str, version: str) -> None:
    image = tmp_path / f"{model}-{version}.img"
    image.write_bytes(secrets.token_bytes(30_000))
    platform = open_platform(served)
    try:
        with platform.db.session() as session:
            firmware.publish_image(session, OtaRepository.for_data_dir(served.data_dir), ACTOR, image, model, version)
    finally:
        platform.close()


def enroll_thing(served: Served, name: str, group: str, tmp_path: Path) -> Path:
    platform = open_platform(served)
    try:
        with platform.db.session() as session:
            if group not in {g.name for g in things.list_groups(session)}:
                things.add_group(session, ACTOR, group, parent=things.DEFAULT_GROUP)
            things.add_thing(session, ACTOR, name, [group])
            token = things.create_enrollment_token(session, ACTOR, name, dt.timedelta(minutes=10)).token
    finally:
        platform.close()
    identity = tmp_path / name / "identity"
    enroll(served.api, token, served.ca, identity)
    return identity


def reported_version(served: Served, name: str) -> str | None:
    platform = open_platform(served)
    try:
        with platform.db.read() as session:
            latest = device_state.latest_report(session, name)
            return latest.report.firmware_version if latest else None
    finally:
        platform.close()


@pytest.fixture
def fleet(served: Served, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(served, tmp_path)
    try:
        yield made
    finally:
        made.stop()


class Fleet:
    """Simulated devices, each an enrolled identity, A/B slots trusting the OTA root, and a job agent."""

    def __init__(self, served: Served, tmp_path: Path) -> None:
        self.served, self.tmp_path = served, tmp_path
        self.agents: dict[str, JobAgent] = {}

    def add(self, name: str, model: str, version: str, group: str, image_check: ImageCheck | None = None) -> JobAgent:
        identity = enroll_thing(self.served, name, group, self.tmp_path)
        updater = FirmwareUpdater.provision(
            self.tmp_path / name / "ota", self.served.root, b"factory", version, self.served.api, self.served.ca, model
        )
        agent = JobAgent(name, identity, updater, self.served.host, self.served.port, image_check=image_check)
        agent.start()
        self.agents[name] = agent
        assert wait_for(lambda: reported_version(self.served, name) == version, 20), f"{name} never reported"
        return agent

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop(10)


def settled(served: Served, campaign: int) -> dict:
    shown: dict = {}

    def done() -> bool:
        shown.update(cli(served, "ota", "rollout", "show", str(campaign)))
        return shown["state"] not in {"running", "paused"} and not shown["counts"]["in_progress"]

    assert wait_for(done, SETTLE, interval=0.5), shown
    return shown


def test_rollout_succeeds_and_a_failing_health_check_rolls_back(served: Served, fleet: Fleet, tmp_path: Path) -> None:
    for i in range(3):
        fleet.add(f"ok-{i}", "cam-a", "1.0.0", "group-a")
    broken = fleet.add("sick-0", "cam-a", "1.0.0", "group-a", image_check=lambda _slot: False)
    publish(served, tmp_path, "cam-a", "1.1.0")
    created = cli(
        served,
        *("ota", "rollout", "create", "--model", "cam-a", "--version", "1.1.0", "--group", "group-a"),
        *("--waves", "25,100", "--abort-min-finished", "10", "--retries", "1", "--timeout", "60"),
    )
    assert (created["devices"], created["wave_sizes"]) == (4, [1, 3])
    shown = settled(served, created["id"])
    assert shown["state"] == "completed"
    assert shown["counts"]["succeeded"] == 3 and shown["counts"]["failed"] == 1
    jobs = {j["thing"]: j for j in shown["jobs"]}
    assert "failed its health check" in jobs["sick-0"]["reason"] or "failed its trial boot" in jobs["sick-0"]["reason"]
    assert jobs["sick-0"]["attempt"] == 2  # retried once
    for i in range(3):
        assert fleet.agents[f"ok-{i}"].updater.running_version == "1.1.0"
        assert wait_for(lambda i=i: reported_version(served, f"ok-{i}") == "1.1.0", 10)
    assert broken.updater.running_version == "1.0.0"
    states = [s for job, attempt, s, sub in fleet.agents["ok-0"].stats.reports]
    substates = [sub for job, attempt, s, sub in fleet.agents["ok-0"].stats.reports if sub]
    assert states[-1] == "succeeded"
    assert substates == ["downloading", "verifying", "installing", "rebooting", "rebooting"]
    assert fleet.agents["ok-0"].stats.restarts == 1


def test_twenty_devices_in_three_waves_end_on_the_new_version(served: Served, fleet: Fleet, tmp_path: Path) -> None:
    names = [f"fleet-{i:02d}" for i in range(20)]
    for name in names:
        fleet.add(name, "cam-w", "2.0.0", "group-w")
    publish(served, tmp_path, "cam-w", "2.1.0")
    created = cli(
        served,
        *("ota", "rollout", "create", "--model", "cam-w", "--version", "2.1.0", "--group", "group-w"),
        *("--waves", "10,50,100", "--max-per-minute", "600", "--timeout", "120"),
    )
    assert (created["devices"], created["wave_sizes"]) == (20, [2, 8, 10])
    shown = settled(served, created["id"])
    assert shown["state"] == "completed"
    assert shown["counts"]["succeeded"] == 20
    assert {j["wave"] for j in shown["jobs"]} == {1, 2, 3}
    for name in names:
        assert fleet.agents[name].updater.running_version == "2.1.0"
        assert wait_for(lambda name=name: reported_version(served, name) == "2.1.0", 10), name


def test_failures_abort_the_rollout_and_queued_devices_end_canceled(
    served: Served, fleet: Fleet, tmp_path: Path
) -> None:
    for i in range(5):
        fleet.add(f"bad-{i}", "cam-b", "1.0.0", "group-b", image_check=lambda _slot: False)
    publish(served, tmp_path, "cam-b", "1.1.0")
    created = cli(
        served,
        *("ota", "rollout", "create", "--model", "cam-b", "--version", "1.1.0", "--group", "group-b"),
        *("--waves", "40,100", "--abort-failure-percent", "50", "--abort-min-finished", "2", "--retries", "0"),
    )
    shown = settled(served, created["id"])
    assert shown["state"] == "aborted"
    assert shown["counts"]["failed"] == 2 and shown["counts"]["canceled"] == 3
    assert {j["state"] for j in shown["jobs"] if j["wave"] == 2} == {"canceled"}
    assert all(agent.updater.running_version == "1.0.0" for agent in fleet.agents.values())
    listed = cli(served, "ota", "rollout", "list")["rollouts"]
    assert any(r["id"] == created["id"] and r["state"] == "aborted" for r in listed)


def test_fix_sends_the_first_fixed_version_to_the_affected_devices(
    served: Served, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.add("old-0", "cam-c", "1.0.0", "group-c")
    fleet.add("old-1", "cam-c", "1.1.0", "group-c")
    fine = fleet.add("new-0", "cam-c", "1.2.0", "group-c")
    for version in ("1.1.5", "1.2.0", "1.3.0"):
        publish(served, tmp_path, "cam-c", version)
    cli(served, "ota", "advisory", "add", "--id", "CVE-2026-4242", "--model", "cam-c", "--affected", "<1.2.0")
    # One affected device is in quarantine: it keeps its commands and update topics, so the fix reaches it.
    report = cli(served, "audit")
    fid = next(
        f["id"]
        for c in report["checks"]
        for f in c["findings"]
        if c["id"] == "FIRMWARE_ADVISORY" and f["resource"] == "thing:old-1"
    )
    cli(served, "audit", "mitigate", fid, "--action", "quarantine")
    created = cli(served, "ota", "rollout", "create", "--fix", "CVE-2026-4242", "--waves", "100")
    assert (created["version"], created["devices"], created["advisory"]) == ("1.2.0", 2, "CVE-2026-4242")
    shown = settled(served, created["id"])
    assert (shown["state"], shown["counts"]["succeeded"]) == ("completed", 2)
    assert {j["thing"] for j in shown["jobs"]} == {"old-0", "old-1"}
    assert fleet.agents["old-0"].updater.running_version == "1.2.0"
    assert fleet.agents["old-1"].updater.running_version == "1.2.0"
    assert fine.stats.reports == []  # never part of it
    # The quarantined one may not publish its state, so only the other is known to be fixed.
    assert [d["thing"] for d in cli(served, "ota", "advisory", "devices", "CVE-2026-4242")["devices"]] == ["old-1"]


def test_a_late_device_gets_its_job_and_a_forged_status_is_refused(
    served: Served, fleet: Fleet, tmp_path: Path
) -> None:
    publish(served, tmp_path, "cam-d", "2.0.0")
    identities = {}
    for name in ("victim", "attacker"):
        identities[name] = enroll_thing(served, name, "group-d", tmp_path)
        device = Device.from_dir(identities[name], name, host=served.host, port=served.port)
        device.connect()
        device.publish_state(DeviceState(model="cam-d", firmware_version="1.0.0")).wait_for_publish(10)
        device.close()
        assert wait_for(lambda name=name: reported_version(served, name) == "1.0.0", 10)
    created = cli(
        served,
        *("ota", "rollout", "create", "--model", "cam-d", "--version", "2.0.0", "--group", "group-d"),
        *("--waves", "100", "--timeout", "600"),
    )

    def released() -> bool:
        shown = cli(served, "ota", "rollout", "show", str(created["id"]))
        return all(j["attempt"] == 1 for j in shown["jobs"])

    assert wait_for(released, 10)
    # Both devices were offline when their jobs went out: they find them (retained) when they come.
    received: dict[str, list[bytes]] = {"victim": [], "attacker": []}
    foreign: dict[str, list[str]] = {"victim": [], "attacker": []}
    devices = {}
    for name in ("victim", "attacker"):
        devices[name] = Device.from_dir(
            identities[name],
            name,
            host=served.host,
            port=served.port,
            on_command=lambda topic, payload, name=name: (
                received[name].append(payload) if topic == job_topic(name) else foreign[name].append(topic)
            ),
        )
        devices[name].connect()
    # A wildcard for every thing's job documents: the broker refuses it (SUBACK 0x80), nothing arrives.
    devices["attacker"].subscribe("things/+/commands/ota", qos=1)
    try:
        assert wait_for(lambda: all(received.values()), 10)
        victim_job = parse_job_document(received["victim"][0])
        attacker_job = parse_job_document(received["attacker"][0])
        assert victim_job.job_id != attacker_job.job_id and victim_job.version == "2.0.0"
        # The attacker reports failure of the victim's job: on its own topic (refused by the server), and on
        # the victim's topic (refused by the broker).
        forged = StatusReport(victim_job.job_id, victim_job.attempt, "failed", reason="forged").to_payload()
        devices["attacker"].publish(status_topic("attacker"), forged, qos=1).wait_for_publish(10)
        devices["attacker"].publish(status_topic("victim"), forged, qos=1)
        # Its own job's report goes through, so the server demonstrably read what came before it.
        own = StatusReport(attacker_job.job_id, attacker_job.attempt, "in_progress", "downloading", "1.0.0")
        devices["attacker"].publish(status_topic("attacker"), own.to_payload(), qos=1).wait_for_publish(10)

        def attacker_in_progress() -> bool:
            jobs = {j["thing"]: j for j in cli(served, "ota", "rollout", "show", str(created["id"]))["jobs"]}
            return jobs["attacker"]["state"] == "in_progress"

        assert wait_for(attacker_in_progress, 10)
        jobs = {j["thing"]: j for j in cli(served, "ota", "rollout", "show", str(created["id"]))["jobs"]}
        assert (jobs["victim"]["state"], jobs["victim"]["reason"]) == ("queued", "")
        # Cancel: the victim, still holding its job, is told.
        cli(served, "ota", "rollout", "cancel", str(created["id"]))
        assert wait_for(lambda: any(b'"cancel"' in p for p in received["victim"]), 10)
        assert foreign == {"victim": [], "attacker": []}
    finally:
        for device in devices.values():
            device.close()


def test_an_agent_cut_off_at_its_reboot_carries_on_and_an_older_image_is_rejected(
    served: Served, fleet: Fleet, tmp_path: Path
) -> None:
    cut = fleet.add("cut-0", "cam-e", "1.0.0", "group-e")
    cut.restart_after_install = False  # stops at the reboot, as a device losing power there would
    # The registry believes this one runs 1.0.0 (its last report); it runs 1.5.0 when the job comes.
    newer = fleet.add("newer-0", "cam-e", "1.0.0", "group-e")
    newer.stop(10)
    newer.updater.slots.create(b"newer factory image", "1.5.0")
    publish(served, tmp_path, "cam-e", "1.1.0")
    created = cli(
        served,
        *("ota", "rollout", "create", "--model", "cam-e", "--version", "1.1.0", "--group", "group-e"),
        *("--waves", "100", "--retries", "0", "--abort-min-finished", "10"),
    )
    assert wait_for(lambda: not cut._thread.is_alive(), 20)  # type: ignore[union-attr]
    assert cut.updater.slots.load().trial is not None  # installed, not yet booted
    again = JobAgent(
        cut.name,
        cut.identity_dir,
        FirmwareUpdater(cut.updater.device_dir, served.api, served.ca, "cam-e"),
        served.host,
        served.port,
    )
    fleet.agents["cut-0-again"] = again
    again.start()
    rejecting = JobAgent(newer.name, newer.identity_dir, newer.updater, served.host, served.port)
    fleet.agents["newer-0-again"] = rejecting
    rejecting.start()
    shown = settled(served, created["id"])
    jobs = {j["thing"]: j for j in shown["jobs"]}
    assert jobs["cut-0"]["state"] == "succeeded"
    assert again.updater.running_version == "1.1.0"
    assert [s for _, _, s, _ in again.stats.reports][-1] == "succeeded"
    assert jobs["newer-0"]["state"] == "rejected"
    assert "older than the running 1.5.0" in jobs["newer-0"]["reason"]
    assert rejecting.updater.running_version == "1.5.0"


def test_the_device_agent_command_takes_part_in_a_rollout(served: Served, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    identity = enroll_thing(served, "cli-0", "group-f", tmp_path)
    factory = tmp_path / "factory.img"
    factory.write_bytes(b"factory")
    root = tmp_path / "root.json"
    root.write_bytes(served.root)
    agent = subprocess.Popen(
        [
            *(sys.executable, "-m", "thingward.cli.main", "device", "agent", "--dir", str(identity)),
            *("--mqtt", f"{served.host}:{served.port}", "--api", served.api, "--model", "cam-f"),
            *("--trusted-root", str(root), "--factory-image", str(factory), "--factory-version", "1.0.0"),
            *("--duration", "60", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: reported_version(served, "cli-0") == "1.0.0", 20)
        publish(served, tmp_path, "cam-f", "1.0.1")
        created = cli(
            served,
            *("ota", "rollout", "create", "--model", "cam-f", "--version", "1.0.1", "--group", "group-f"),
        )
        assert settled(served, created["id"])["counts"]["succeeded"] == 1
        agent.send_signal(signal.SIGINT)
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["running_version"], summary["restarts"]) == ("1.0.1", 1), err


def test_an_agent_killed_mid_download_carries_on_and_the_download_resumes(served: Served, tmp_path: Path) -> None:
    identity = enroll_thing(served, "halfway-0", "group-g", tmp_path)
    updater = FirmwareUpdater.provision(
        tmp_path / "halfway-0" / "ota", served.root, b"factory", "1.0.0", served.api, served.ca, "cam-g"
    )
    device = Device.from_dir(identity, "halfway-0", host=served.host, port=served.port)
    device.connect()
    device.publish_state(DeviceState(model="cam-g", firmware_version="1.0.0")).wait_for_publish(10)
    device.close()
    assert wait_for(lambda: reported_version(served, "halfway-0") == "1.0.0", 10)
    publish(served, tmp_path, "cam-g", "1.1.0")
    image = (tmp_path / "cam-g-1.1.0.img").read_bytes()
    created = cli(served, *("ota", "rollout", "create", "--model", "cam-g", "--version", "1.1.0", "--group", "group-g"))
    received: list[bytes] = []
    device = Device.from_dir(
        identity, "halfway-0", host=served.host, port=served.port, on_command=lambda t, p: received.append(p)
    )
    device.connect()
    try:
        assert wait_for(lambda: bool(received), 10)
    finally:
        device.close()
    document = parse_job_document(received[0])
    # What a device killed halfway through the download leaves: its journal, and half the image.
    (updater.device_dir / "jobs.json").write_text(
        json.dumps({"job": json.loads(document.to_payload()), "phase": "running", "done": []})
    )
    partial = updater.device_dir / "download" / f"{hashlib.sha256(image).hexdigest()}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(image[: len(image) // 2])
    agent = JobAgent("halfway-0", identity, updater, served.host, served.port)
    agent.start()
    try:
        shown = settled(served, created["id"])
    finally:
        agent.stop(10)
    assert shown["counts"]["succeeded"] == 1
    assert updater.running_version == "1.1.0"
    assert agent.stats.last_update is not None
    assert agent.stats.last_update.downloaded_bytes == len(image) - len(image) // 2


def test_a_restarted_server_sends_pending_jobs_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    init_data_dir(data_dir)
    create_key_set(tmp_path / "keys", root_keys=1, root_threshold=1)
    repo = OtaRepository.initialise(OtaRepository.for_data_dir(data_dir).path, tmp_path / "keys")
    with serving(data_dir, dict(os.environ)) as first:
        served = Served(data_dir, first.mqtt_host, first.mqtt_port, first.api, first.ca, b"")
        identity = enroll_thing(served, "sleepy-0", "group-h", tmp_path)
        device = Device.from_dir(identity, "sleepy-0", host=served.host, port=served.port)
        device.connect()
        device.publish_state(DeviceState(model="cam-h", firmware_version="1.0.0")).wait_for_publish(10)
        device.close()
        assert wait_for(lambda: reported_version(served, "sleepy-0") == "1.0.0", 10)
        publish(served, tmp_path, "cam-h", "1.1.0")
        created = cli(
            served, "ota", "rollout", "create", "--model", "cam-h", "--version", "1.1.0", "--group", "group-h"
        )
        assert wait_for(
            lambda: cli(served, "ota", "rollout", "show", str(created["id"]))["jobs"][0]["attempt"] == 1, 10
        )
    assert repo.exists
    # The embedded broker kept the retained job document in memory only; the new server publishes it again.
    with serving(data_dir, dict(os.environ)) as second:
        received: list[bytes] = []
        device = Device.from_dir(
            identity,
            "sleepy-0",
            host=second.mqtt_host,
            port=second.mqtt_port,
            on_command=lambda t, p: received.append(p),
        )
        device.connect()
        try:
            assert wait_for(lambda: bool(received), 10)
        finally:
            device.close()
    document = parse_job_document(received[0])
    assert (document.operation, document.version, document.attempt) == ("update", "1.1.0", 1)
