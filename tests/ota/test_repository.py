"""The TUF repository: keys, root thresholds, online re-signing, and what the server never needs."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from thingward.errors import ConflictError, InvalidInputError, OtaError
from thingward.ota.keys import KEYS_FILE, create_key_set, load_root_signers
from thingward.ota.repository import OtaRepository


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_ceremony_writes_private_keys_0600_and_public_key_set(ota_keys: Path) -> None:
    pems = sorted(ota_keys.rglob("*.pem"))
    assert [p.name for p in pems] == [
        "snapshot.pem",
        "targets.pem",
        "timestamp.pem",
        "root-1.pem",
        "root-2.pem",
        "root-3.pem",
    ]
    assert {_mode(p) for p in pems} == {0o600}
    assert _mode(ota_keys) == _mode(ota_keys / "root") == 0o700
    public = json.loads((ota_keys / KEYS_FILE).read_text())
    assert public["root"]["threshold"] == 2 and len(public["root"]["keys"]) == 3
    assert "PRIVATE" not in (ota_keys / KEYS_FILE).read_text()


def test_impossible_threshold_and_non_empty_dir_refused(tmp_path: Path, ota_keys: Path) -> None:
    with pytest.raises(InvalidInputError, match="threshold of 4 of 3"):
        create_key_set(tmp_path / "k", root_keys=3, root_threshold=4)
    with pytest.raises(InvalidInputError, match="not empty"):
        create_key_set(ota_keys)


def test_encrypted_root_keys_need_their_passphrase(tmp_path: Path) -> None:
    create_key_set(tmp_path / "k", root_keys=2, root_threshold=1, passphrase=b"correct horse battery")
    assert b"ENCRYPTED" in (tmp_path / "k" / "root" / "root-1.pem").read_bytes()
    with pytest.raises(OtaError, match="is encrypted"):
        load_root_signers(tmp_path / "k")
    with pytest.raises(OtaError, match="wrong passphrase"):
        load_root_signers(tmp_path / "k", b"wrong")
    assert len(load_root_signers(tmp_path / "k", b"correct horse battery")) == 2


def test_root_is_signed_by_the_root_threshold(repo: OtaRepository) -> None:
    root = repo.root()
    assert root.signed.version == 1 and root.signed.consistent_snapshot
    assert root.signed.roles["root"].threshold == 2 and len(root.signed.roles["root"].keyids) == 3
    root.verify_delegate("root", root)
    for role in ("targets", "snapshot", "timestamp"):
        root.verify_delegate(role, Metadata.from_file(str(repo.metadata_dir / f"{role}.json")))
    # One signature is below the threshold of two.
    root.signatures = dict(list(root.signatures.items())[:1])
    with pytest.raises(UnsignedMetadataError):
        root.verify_delegate("root", root)


def test_init_refused_with_fewer_root_keys_than_the_threshold(platform, ota_keys: Path) -> None:
    (ota_keys / "root" / "root-2.pem").unlink()
    (ota_keys / "root" / "root-3.pem").unlink()
    with pytest.raises(OtaError, match="holds 1 root key"):
        OtaRepository.initialise(OtaRepository.for_data_dir(platform.settings.data_dir).path, ota_keys)
    assert not OtaRepository.for_data_dir(platform.settings.data_dir).exists


def test_init_twice_refused(repo: OtaRepository, ota_keys: Path) -> None:
    with pytest.raises(ConflictError, match="exists"):
        OtaRepository.initialise(repo.path, ota_keys)


def test_server_signs_without_the_root_keys(repo: OtaRepository, ota_keys: Path, tmp_path: Path) -> None:
    shutil.rmtree(ota_keys)  # the ceremony's directory went offline
    assert not list(repo.path.rglob("root-*.pem"))
    image = tmp_path / "fw.img"
    image.write_bytes(b"firmware" * 100)
    repo.add_target("cam/1.0.0.img", image, {"model": "cam", "version": "1.0.0"})
    root = repo.root()
    targets = repo.targets()
    root.verify_delegate("targets", targets)
    assert targets.signed.version == 2 and "cam/1.0.0.img" in targets.signed.targets
    assert repo.snapshot().signed.meta["targets.json"].version == 2
    assert repo.timestamp().signed.snapshot_meta.version == repo.snapshot().signed.version


def test_timestamp_re_signed_when_half_its_life_is_gone(repo: OtaRepository) -> None:
    before = repo.timestamp().signed
    assert repo.refresh() == []
    later = before.expires - repo.lifetimes.timestamp / 2 + dt.timedelta(seconds=1)
    assert repo.refresh(now=later) == ["timestamp"]
    after = repo.timestamp().signed
    assert after.version == before.version + 1 and after.expires > before.expires
    assert repo.snapshot().signed.version == 1  # the snapshot was not due


def test_a_signer_the_root_does_not_trust_is_refused(repo: OtaRepository, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_key_set(other)
    signers = json.loads((repo.keys_dir / "signers.json").read_text())
    foreign = json.loads((other / KEYS_FILE).read_text())["online"]["timestamp"]
    shutil.copy(other / "online" / "timestamp.pem", repo.keys_dir / "evil.pem")
    signers["timestamp"] = {
        "uri": f"file2:{repo.keys_dir / 'evil.pem'}",
        "keyid": foreign["keyid"],
        "key": foreign["key"],
    }
    (repo.keys_dir / "signers.json").write_text(json.dumps(signers))
    with pytest.raises(OtaError, match="not one the root trusts"):
        repo.refresh(force=["timestamp"])


def test_served_names_cannot_escape_the_repository(repo: OtaRepository) -> None:
    assert repo.metadata_file("1.root.json") is not None
    for name in ("../thingward.toml", "root.json/../../audit.key", "0.root.json", "keys.json", "2.root.json"):
        assert repo.metadata_file(name) is None
    assert repo.target_file("..", "x.img") is None
    assert repo.target_file("cam", "../../keys/signers.json") is None


def test_rotation_needs_the_current_root_threshold(repo: OtaRepository, ota_keys: Path, tmp_path: Path) -> None:
    new = tmp_path / "new-keys"
    create_key_set(new)
    (ota_keys / "root" / "root-1.pem").unlink()
    (ota_keys / "root" / "root-2.pem").unlink()
    with pytest.raises(OtaError):
        repo.rotate_root(ota_keys, new)
    assert repo.root().signed.version == 1
    # Keys of another ceremony are not the current root's keys at all.
    with pytest.raises(OtaError, match="rotating needs 2"):
        repo.rotate_root(new, new)
    assert Metadata[Root].from_file(str(repo.metadata_dir / "root.json")).signed.version == 1


def test_root_expiry_is_flagged_a_month_ahead(repo: OtaRepository) -> None:
    expires = repo.root().signed.expires
    assert not repo.root_expires_soon()
    assert repo.root_expires_soon(now=expires - dt.timedelta(days=29))
