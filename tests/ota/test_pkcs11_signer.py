"""An online OTA key in a PKCS#11 token (SoftHSM2): the server signs through it, devices verify it."""

from __future__ import annotations

import json
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11.util.ec import encode_named_curve_parameters
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.device.update import FirmwareUpdater
from thingward.errors import OtaError
from thingward.ota import firmware
from thingward.ota.keys import PKCS11_PIN_ENV, Pkcs11Key, create_key_set
from thingward.ota.repository import OtaRepository
from thingward.registry.audit_log import Actor


def _token_key(token, key_id: int) -> None:
    with pkcs11.lib(token.module_path).get_token(token_label=token.label).open(rw=True, user_pin=token.pin) as session:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
        )
        params.generate_keypair(
            id=key_id.to_bytes(1, "big"),
            label="ota-timestamp",
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
        )


def test_timestamp_signed_in_a_token_and_verified_by_a_device(api, softhsm_token, monkeypatch, tmp_path: Path) -> None:
    _token_key(softhsm_token, 2)
    monkeypatch.setenv(PKCS11_PIN_ENV, softhsm_token.pin)
    monkeypatch.setenv("PYKCS11LIB", softhsm_token.module_path)
    keys = tmp_path / "keys"
    in_token = Pkcs11Key("timestamp", softhsm_token.module_path, softhsm_token.label, 2)
    key_set = create_key_set(keys, pkcs11_keys=(in_token,))
    assert key_set.online_keys["timestamp"].scheme == "ecdsa-sha2-nistp256"
    assert not (keys / "online" / "timestamp.pem").exists()  # the private key never left the token
    repo = OtaRepository.initialise(OtaRepository.for_data_dir(api.platform.settings.data_dir).path, keys)
    assert not list(repo.keys_dir.glob("timestamp-*.pem"))
    timestamp = repo.timestamp()
    assert list(timestamp.signatures) == [key_set.online_keys["timestamp"].keyid]
    repo.root().verify_delegate("timestamp", timestamp)

    image = tmp_path / "fw.img"
    image.write_bytes(b"\x7fELF" * 5000)
    with api.platform.db.session() as session:
        firmware.publish_image(session, repo, Actor("test", "pytest"), image, "cam", "1.1.0")
    device = FirmwareUpdater.provision(
        tmp_path / "dev",
        (repo.metadata_dir / "1.root.json").read_bytes(),
        b"factory",
        "1.0.0",
        api.url,
        api.platform.ca_certificate_path,
        "cam",
    )
    assert device.update().status == "installed"
    assert device.boot(lambda slot, version: True).status == "confirmed"

    monkeypatch.setenv(PKCS11_PIN_ENV, "wrong-pin")
    with pytest.raises(OtaError, match="signing timestamp metadata failed"):
        repo.refresh(force=["timestamp"])
    monkeypatch.delenv(PKCS11_PIN_ENV)
    with pytest.raises(OtaError, match="PKCS#11 PIN"):
        repo.refresh(force=["timestamp"])
    assert device.update().status == "up_to_date"  # nothing half-signed was served


def test_a_token_without_the_key_is_refused_at_the_ceremony(softhsm_token, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PKCS11_PIN_ENV, softhsm_token.pin)
    missing = Pkcs11Key("timestamp", softhsm_token.module_path, softhsm_token.label, 7)
    with pytest.raises(OtaError, match="no usable EC P-256 key with id 7"):
        create_key_set(tmp_path / "keys", pkcs11_keys=(missing,))


def test_cli_ceremony_with_a_token_key(softhsm_token, monkeypatch, tmp_path: Path) -> None:
    _token_key(softhsm_token, 3)
    monkeypatch.setenv(PKCS11_PIN_ENV, softhsm_token.pin)
    token = ["--pkcs11-module", softhsm_token.module_path, "--pkcs11-token", softhsm_token.label]
    bad = CliRunner().invoke(
        app, ["ota", "keys", "init", "--out", str(tmp_path / "a"), "--pkcs11", "timestamp", *token]
    )
    assert bad.exit_code == 1 and "ROLE:KEY_ID" in bad.stderr
    ok = CliRunner().invoke(
        app, ["ota", "keys", "init", "--out", str(tmp_path / "b"), "--pkcs11", "snapshot:3", *token, "--json"]
    )
    assert ok.exit_code == 0, ok.stderr
    reference = json.loads((tmp_path / "b" / "online" / "snapshot.json").read_text())
    assert reference == {"uri": f"hsm:3?label={softhsm_token.label}", "pkcs11_module": softhsm_token.module_path}


def test_init_that_cannot_sign_leaves_no_half_repository(platform, softhsm_token, monkeypatch, tmp_path: Path) -> None:
    _token_key(softhsm_token, 4)
    monkeypatch.setenv(PKCS11_PIN_ENV, softhsm_token.pin)
    keys = tmp_path / "keys"
    create_key_set(keys, pkcs11_keys=(Pkcs11Key("timestamp", softhsm_token.module_path, softhsm_token.label, 4),))
    monkeypatch.delenv(PKCS11_PIN_ENV)
    repo = OtaRepository.for_data_dir(platform.settings.data_dir)
    with pytest.raises(OtaError, match="PKCS#11 PIN"):
        OtaRepository.initialise(repo.path, keys)
    assert not repo.exists and not repo.keys_dir.exists()
    monkeypatch.setenv(PKCS11_PIN_ENV, softhsm_token.pin)
    assert OtaRepository.initialise(repo.path, keys).timestamp().signed.version == 1
