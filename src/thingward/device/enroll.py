"""Device enrollment: make a key in the key store, send only a CSR over verified HTTPS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from thingward.errors import EnrollmentRefusedError, InvalidInputError, ThingwardError
from thingward.names import thing_name_of_token
from thingward.pki.files import write_atomic
from thingward.pki.keystore import FileKeyStore, KeyStore

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
ENROLL_TIMEOUT = 15.0


@dataclass(frozen=True)
class EnrolledIdentity:
    name: str
    certificate: Path
    key: Path | None
    ca_certificate: Path


def server_context(ca_certificate: Path) -> ssl.SSLContext:
    """Verify the platform against its own CA only (not the system store), TLS 1.2 or newer."""
    context = ssl.create_default_context(cafile=str(ca_certificate))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def enroll(
    api_url: str,
    token: str,
    ca_certificate: Path,
    out_dir: Path,
    key_store: KeyStore | None = None,
    name: str | None = None,
) -> EnrolledIdentity:
    """Enroll this device: the key is generated in `key_store` (default a 0600 file in `out_dir`)."""
    name = name or thing_name_of_token(token)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = key_store or FileKeyStore(out_dir / KEY_FILE)
    if not store.has_key():
        store.generate_key()
    csr = store.build_csr(name)
    try:
        with httpx.Client(verify=server_context(ca_certificate), timeout=ENROLL_TIMEOUT) as client:
            response = client.post(f"{api_url.rstrip('/')}/api/v1/enroll", json={"token": token, "csr": csr.decode()})
    except httpx.HTTPError as e:
        raise ThingwardError(f"cannot reach the enrollment API at {api_url}: {e}") from e
    if response.status_code != 201:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        if response.status_code == 403:
            raise EnrollmentRefusedError(message)
        if response.status_code == 400:
            raise InvalidInputError(message)
        raise ThingwardError(f"enrollment failed with HTTP {response.status_code}: {message}")
    body = response.json()
    write_atomic(out_dir / CERT_FILE, body["certificate"].encode())
    write_atomic(out_dir / CA_FILE, body["ca_certificate"].encode())
    return EnrolledIdentity(
        name=body["name"],
        certificate=out_dir / CERT_FILE,
        key=store.tls_key_file(),
        ca_certificate=out_dir / CA_FILE,
    )
