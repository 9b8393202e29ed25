"""The device's OTA client against a real HTTPS API: installs what is signed, refuses every attack, rolls back.

Each attack test changes what the server holds the way an attacker with that foothold could, and shows the
device refuses and keeps running its version.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Key, Signer
from tuf.api.metadata import Metadata, Root, TargetFile

from thingward.device.update import FirmwareUpdater, UpdateRefusedError
from thingward.ota import firmware
from thingward.ota.keys import create_key_set, load_root_signers
from thingward.ota.repository import OtaRepository
from thingward.registry.audit_log import Actor

ACTOR = Actor("test", "pytest")
FACTORY_IMAGE = b"factory image 1.0.0" * 100


def _publish(api, repo: OtaRepository, tmp_path: Path, version: str, size: int = 150_000) -> tuple[bytes, Path]:
    data = secrets.token_bytes(size)
    source = tmp_path / f"fw-{version}.img"
    source.write_bytes(data)
    with api.platform.db.session() as session:
        image = firmware.publish_image(session, repo, ACTOR, source, "cam", version)
    return data, repo.targets_dir / "cam" / f"{image.sha256}.{version}.img"


def _device(api, repo: OtaRepository, tmp_path: Path, version: str = "1.0.0", name: str = "dev") -> FirmwareUpdater:
    return FirmwareUpdater.provision(
        tmp_path / name,
        (repo.metadata_dir / "1.root.json").read_bytes(),
        FACTORY_IMAGE,
        version,
        api.url,
        api.platform.ca_certificate_path,
        "cam",
    )


def _stays(device: FirmwareUpdater, version: str = "1.0.0") -> None:
    state = device.slots.load()
    assert device.running_version == version and state.trial is None
    assert device.slots.slot_file(state.active).read_bytes() == FACTORY_IMAGE


def _healthy(slot: Path, version: str) -> bool:
    return slot.stat().st_size > 0


def test_happy_path_install_boot_once_confirm(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    assert device.update().status == "up_to_date"
    data, _ = _publish(api, repo, tmp_path, "1.1.0")
    outcome = device.update()
    assert (outcome.status, outcome.version, outcome.downloaded_bytes) == ("installed", "1.1.0", len(data))
    state = device.slots.load()
    assert state.trial == "b" and device.running_version == "1.0.0"
    assert device.update().status == "awaiting_reboot"
    assert device.slots.slot_file("b").read_bytes() == data
    booted = device.boot(_healthy)
    assert booted.status == "confirmed" and device.running_version == "1.1.0"
    assert device.boot(_healthy).status == "running"
    assert device.update().status == "up_to_date"


def test_agent_cycle_installs_restarts_and_confirms_or_rolls_back(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _publish(api, repo, tmp_path, "1.1.0")
    started, outcome = device.cycle(_healthy)
    assert (outcome.status, started.status, device.running_version) == ("installed", "confirmed", "1.1.0")
    _publish(api, repo, tmp_path, "1.2.0")
    started, outcome = device.cycle(lambda slot, version: version != "1.2.0")
    assert (outcome.status, started.status, device.running_version) == ("installed", "rolled_back", "1.1.0")
    assert device.slots.load().last_result == "rolled back: 1.2.0 failed its health check"
    assert device.update().status == "failed_before"  # no install-and-roll-back loop
    _publish(api, repo, tmp_path, "1.2.1")
    assert device.cycle(_healthy)[0].status == "confirmed" and device.running_version == "1.2.1"


def test_tampered_image_one_byte_changed_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _, stored = _publish(api, repo, tmp_path, "1.1.0")
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    with pytest.raises(UpdateRefusedError, match="does not match its signed length and hash"):
        device.update()
    _stays(device)
    assert not device.slots.slot_file("b").exists()
    assert not list((device.device_dir / "download").iterdir())  # the bad bytes are not kept to resume


def test_target_signed_by_a_key_the_root_does_not_trust_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    # The attacker holds the online snapshot and timestamp keys, not the targets key: they sign targets
    # with a key of their own.
    evil = tmp_path / "evil.img"
    evil.write_bytes(b"backdoor" * 1000)
    targets = repo.targets()
    info = TargetFile.from_file("cam/9.0.0.img", str(evil))
    info.unrecognized_fields["custom"] = {"model": "cam", "version": "9.0.0"}
    targets.signed.targets[info.path] = info
    targets.signed.version += 1
    targets.signatures.clear()
    targets.sign(CryptoSigner.generate_ed25519())
    targets.to_file(str(repo.metadata_dir / f"{targets.signed.version}.targets.json"))
    (repo.targets_dir / "cam").mkdir(parents=True, exist_ok=True)
    shutil.copy(evil, repo.targets_dir / "cam" / f"{info.hashes['sha256']}.9.0.0.img")
    repo._publish(targets, repo.snapshot(), repo.timestamp(), dt.datetime.now(dt.UTC), sign_targets=False)
    with pytest.raises(UpdateRefusedError, match="UnsignedMetadataError"):
        device.update()
    _stays(device)


def test_expired_timestamp_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _publish(api, repo, tmp_path, "1.1.0")
    # A freeze: the server keeps handing out a timestamp that was signed seven hours ago (six-hour life).
    repo.refresh(now=dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=7), force=["timestamp"])
    assert repo.timestamp().signed.is_expired()
    with pytest.raises(UpdateRefusedError, match="ExpiredMetadataError"):
        device.update()
    _stays(device)


def test_older_timestamp_version_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.refresh(force=["timestamp"])
    assert device.update().status == "up_to_date"  # the device has now seen timestamp v2
    _publish(api, repo, tmp_path, "1.1.0")
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # replay v1
    with pytest.raises(UpdateRefusedError, match="BadVersionNumberError"):
        device.update()
    _stays(device)


def test_older_snapshot_version_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _publish(api, repo, tmp_path, "1.1.0")
    _publish(api, repo, tmp_path, "1.2.0")
    device.update()
    device.boot(_healthy)
    assert device.running_version == "1.2.0"
    # With the timestamp key, point a fresh timestamp at the snapshot of an older repository state.
    timestamp = repo.timestamp()
    repo._sign_timestamp(timestamp, repo.snapshot().signed.version - 1, dt.datetime.now(dt.UTC).replace(microsecond=0))
    with pytest.raises(UpdateRefusedError, match="BadVersionNumberError"):
        device.update()
    assert device.running_version == "1.2.0"


def test_older_firmware_version_refused(api, repo, tmp_path: Path) -> None:
    _publish(api, repo, tmp_path, "1.5.0")
    device = _device(api, repo, tmp_path, version="2.0.0")
    with pytest.raises(UpdateRefusedError, match=r"version 1\.5\.0, older than the running 2\.0\.0"):
        device.update()
    with pytest.raises(UpdateRefusedError, match="older than the running"):
        device.update(version="1.5.0")
    _stays(device, "2.0.0")


def test_image_longer_than_its_signed_length_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    data, stored = _publish(api, repo, tmp_path, "1.1.0")
    stored.write_bytes(data + secrets.token_bytes(5_000_000))  # endless data, as far as the device knows
    with pytest.raises(UpdateRefusedError, match="longer than its signed 150000 bytes"):
        device.update()
    _stays(device)
    assert not list((device.device_dir / "download").iterdir())


def test_failing_health_check_rolls_back(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _publish(api, repo, tmp_path, "1.1.0")
    assert device.update().status == "installed"
    booted = device.boot(lambda slot, version: False)
    assert (booted.status, booted.version) == ("rolled_back", "1.0.0")
    assert "1.1.0 failed its health check" in booted.reason
    _stays(device)


def test_agent_dying_during_the_trial_boot_rolls_back(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    _publish(api, repo, tmp_path, "1.1.0")
    device.update()

    def dies(slot: Path, version: str) -> bool:
        raise KeyboardInterrupt  # the process goes away before confirming

    with pytest.raises(KeyboardInterrupt):
        device.boot(dies)
    booted = device.boot(_healthy)  # the next start: the one trial boot was spent
    assert booted.status == "rolled_back" and "did not confirm" in booted.reason
    _stays(device)


def test_interrupted_download_resumes(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    data, _ = _publish(api, repo, tmp_path, "1.1.0")
    sha = repo.targets().signed.targets["cam/1.1.0.img"].hashes["sha256"]
    part = device.device_dir / "download" / f"{sha}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:60_000])  # what an earlier, broken-off attempt left
    outcome = device.update()
    assert outcome.status == "installed" and outcome.downloaded_bytes == len(data) - 60_000
    assert device.slots.slot_file("b").read_bytes() == data


def test_client_follows_a_root_rotation_and_then_trusts_only_the_new_keys(
    api, repo, ota_keys: Path, tmp_path: Path
) -> None:
    device = _device(api, repo, tmp_path)
    assert device.update().status == "up_to_date"
    old_signers = json.loads((repo.keys_dir / "signers.json").read_text())
    new_keys = tmp_path / "new-keys"
    create_key_set(new_keys, root_keys=2, root_threshold=2)
    repo.rotate_root(ota_keys, new_keys)
    assert not Path(old_signers["timestamp"]["uri"].removeprefix("file2:")).exists()  # retired from the server
    data, _ = _publish(api, repo, tmp_path, "1.1.0")
    assert device.update().status == "installed"
    assert device.slots.slot_file("b").read_bytes() == data
    trusted = Metadata[Root].from_file(str(device.device_dir / "tuf" / "root.json")).signed
    assert trusted.version == 2 and trusted.roles["root"].threshold == 2
    assert device.boot(_healthy).status == "confirmed"
    # The old timestamp key still exists somewhere; what it signs is no longer believed.
    timestamp = repo.timestamp()
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    old = old_signers["timestamp"]
    old_key = f"file2:{ota_keys / 'online' / 'timestamp.pem'}"  # the ceremony's copy
    timestamp.sign(Signer.from_priv_key_uri(old_key, Key.from_dict(old["keyid"], dict(old["key"]))))
    timestamp.to_file(str(repo.metadata_dir / "timestamp.json"))
    with pytest.raises(UpdateRefusedError, match="UnsignedMetadataError"):
        device.update()
    assert device.running_version == "1.1.0"


def test_new_root_signed_only_by_the_new_keys_refused(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    new_keys = tmp_path / "new-keys"
    create_key_set(new_keys)
    forged = repo.root()
    forged.signed.version = 2
    for keyid in list(forged.signed.roles["root"].keyids):
        forged.signed.revoke_key(keyid, "root")
    signers = load_root_signers(new_keys)
    for signer in signers:
        forged.signed.add_key(signer.public_key, "root")
    forged.signatures.clear()
    for signer in signers:
        forged.sign(signer, append=True)
    forged.to_file(str(repo.metadata_dir / "2.root.json"))
    with pytest.raises(UpdateRefusedError, match="UnsignedMetadataError"):
        device.update()
    assert Metadata[Root].from_file(str(device.device_dir / "tuf" / "root.json")).signed.version == 1


_DIES_WRITING_THE_SLOT = """
import os, signal, sys
from pathlib import Path
from thingward.device import update

def copy_then_die(src, dst, length=0):
    dst.write(src.read(50_000))
    dst.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # power cut in the middle of the slot write

update.shutil.copyfileobj = copy_then_die
update.FirmwareUpdater(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), "cam").update()
"""


def test_agent_killed_while_writing_the_new_slot_boots_the_old_one(api, repo, tmp_path: Path) -> None:
    device = _device(api, repo, tmp_path)
    data, _ = _publish(api, repo, tmp_path, "1.1.0")
    agent = subprocess.run(
        [
            sys.executable,
            "-c",
            _DIES_WRITING_THE_SLOT,
            str(device.device_dir),
            api.url,
            str(api.platform.ca_certificate_path),
        ],
        capture_output=True,
        timeout=60,
    )
    assert agent.returncode == -signal.SIGKILL, agent.stderr
    half_written = device.slots.path / ".slot-b.img.tmp"
    assert 0 < half_written.stat().st_size < len(data)
    assert device.boot(_healthy).status == "running"
    _stays(device)
    assert device.update().status == "installed"  # the next try starts the slot afresh
    assert device.slots.slot_file("b").read_bytes() == data
