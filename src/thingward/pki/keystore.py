"""Where a device keeps its private key: the key is made there, signs the CSR there, and never leaves.

`FileKeyStore` keeps an EC P-256 key in a 0600 PEM file. `Pkcs11KeyStore` (in `pkcs11_store`) keeps it in
a PKCS#11 token, the stand-in for a device's crypto processor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from thingward.errors import PkiError
from thingward.pki.files import write_secret

__all__ = ["FileKeyStore", "KeyStore", "build_csr_with_key"]


class KeyStore(Protocol):
    """A device's private key holder."""

    def has_key(self) -> bool: ...

    def generate_key(self) -> None:
        """Create an EC P-256 key pair inside the store. Refuses to replace an existing key."""
        ...

    def build_csr(self, common_name: str) -> bytes:
        """A PEM CSR for `common_name`, signed inside the store."""
        ...

    def tls_key_file(self) -> Path | None:
        """A key file that Python's ssl module can load for the handshake, or None if the key is not exportable."""
        ...


def build_csr_with_key(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class FileKeyStore:
    """An EC P-256 private key in a PEM file of mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def has_key(self) -> bool:
        return self.path.exists()

    def generate_key(self) -> None:
        if self.path.exists():
            raise PkiError(f"{self.path} exists already; refusing to replace a device key")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_secret(self.path, pem)

    def _load(self) -> ec.EllipticCurvePrivateKey:
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & 0o077:
            raise PkiError(f"{self.path} has mode {mode:o}: a private key must be readable by its owner only (0600)")
        key = serialization.load_pem_private_key(self.path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.path} does not hold an EC private key")
        return key

    def build_csr(self, common_name: str) -> bytes:
        return build_csr_with_key(self._load(), common_name)

    def tls_key_file(self) -> Path | None:
        self._load()  # checks mode and type before the file is handed to ssl
        return self.path
