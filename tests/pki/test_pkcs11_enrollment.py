"""Enrollment with the key in a PKCS#11 token (SoftHSM2): the CSR is signed in the token, the key never leaves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from thingward.device.enroll import KEY_FILE, enroll
from thingward.pki.ca import thing_name_from_certificate
from thingward.pki.pkcs11_store import Pkcs11KeyStore
from thingward.registry import things
from thingward.registry.audit_log import Actor


def test_device_enrolls_with_a_key_held_in_a_pkcs11_token(api, softhsm_token, tmp_path: Path) -> None:
    with api.platform.db.session() as session:
        things.add_thing(session, Actor("test", "pytest"), "cam-hsm")
        token = things.create_enrollment_token(session, Actor("test", "pytest"), "cam-hsm", dt.timedelta(hours=1)).token
    store = Pkcs11KeyStore(softhsm_token.module_path, softhsm_token.label, softhsm_token.pin, key_label="cam-hsm")
    out = tmp_path / "cam-hsm"
    identity = enroll(api.url, token, api.platform.ca_certificate_path, out, key_store=store)
    assert identity.name == "cam-hsm"
    assert identity.key is None  # nothing exportable for ssl: the key stays in the token
    assert not (out / KEY_FILE).exists()
    cert = x509.load_pem_x509_certificate(identity.certificate.read_bytes())
    assert thing_name_from_certificate(cert) == "cam-hsm"
    assert cert.public_key() == store.public_key()
