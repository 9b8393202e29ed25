"""A device made the way `thingward device add NAME` and `thingward device enroll` make one, through the same
service functions but in-process: a thing, a one-time token, a key made here, a CSR, the certificate, and the
device directory the SDK reads (key 0600)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE
from thingward.pki.ca import certificate_pem, private_key_pem
from thingward.pki.files import write_atomic, write_secret
from thingward.platform import Platform, cli_actor
from thingward.registry import things


def enroll_device(platform: Platform, name: str, directory: Path) -> Path:
    """Register `name`, enroll it with a fresh P-256 key, and write its identity into `directory`."""
    with platform.db.session() as session:
        things.add_thing(session, cli_actor(), name)
        token = things.create_enrollment_token(session, cli_actor(), name, dt.timedelta(hours=1)).token
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    enrollment = platform.enroll(token, csr.public_bytes(serialization.Encoding.PEM), "test")
    write_atomic(directory / CERT_FILE, certificate_pem(enrollment.certificate))
    write_secret(directory / KEY_FILE, private_key_pem(key))
    shutil.copy(platform.ca_certificate_path, directory / CA_FILE)
    return directory
