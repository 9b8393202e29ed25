"""The platform certificate authority: an EC P-256 root that issues server and device certificates and the CRL.

Pure functions build certificates from inputs (a key, a CSR, a clock); `create_ca` and `load_ca` are the
only ones that touch the disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from thingward.errors import PkiError
from thingward.pki.files import write_atomic, write_secret

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
SERVER_KEY_FILE = "server.key"
SERVER_CERT_FILE = "server.crt"
CRL_FILE = "crl.pem"

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=397)
CRL_VALIDITY = dt.timedelta(days=7)
# Certificates start a little in the past so a device whose clock lags by minutes still accepts them.
BACKDATE = dt.timedelta(minutes=5)

THING_URI_PREFIX = "urn:thingward:thing:"


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def name(self) -> x509.Name:
        return self.certificate.subject


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_identifiers(
    builder: x509.CertificateBuilder, public_key: ec.EllipticCurvePublicKey, ca: CertificateAuthority
) -> x509.CertificateBuilder:
    return builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
    )


def build_root_ca(common_name: str, now: dt.datetime | None = None) -> CertificateAuthority:
    """A fresh EC P-256 root that may sign only end-entity certificates and CRLs (path length 0)."""
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "thingward"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, certificate=cert)


def _encryption(passphrase: bytes | None) -> serialization.KeySerializationEncryption:
    if passphrase:
        return serialization.BestAvailableEncryption(passphrase)
    return serialization.NoEncryption()


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase))


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(pki_dir: Path, common_name: str, passphrase: bytes | None = None) -> CertificateAuthority:
    """Create the CA in `pki_dir`: `ca.key` (0600, encrypted when a passphrase is given) and `ca.crt`."""
    if (pki_dir / CA_KEY_FILE).exists():
        raise PkiError(f"{pki_dir / CA_KEY_FILE} exists already; refusing to replace a CA key")
    ca = build_root_ca(common_name)
    pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret(pki_dir / CA_KEY_FILE, private_key_pem(ca.key, passphrase))
    write_atomic(pki_dir / CA_CERT_FILE, certificate_pem(ca.certificate))
    return ca


def load_ca(pki_dir: Path, passphrase: bytes | None = None) -> CertificateAuthority:
    """Load the CA from `pki_dir`. An encrypted key without the right passphrase is a clear error."""
    try:
        key_pem = (pki_dir / CA_KEY_FILE).read_bytes()
        cert = x509.load_pem_x509_certificate((pki_dir / CA_CERT_FILE).read_bytes())
    except FileNotFoundError as e:
        raise PkiError(f"no CA in {pki_dir}: run 'thingward init' first ({e.filename} is missing)") from e
    encrypted = b"ENCRYPTED" in key_pem
    if encrypted and not passphrase:
        raise PkiError("the CA key is encrypted: set the environment variable named by [pki] ca_passphrase_env")
    try:
        key = serialization.load_pem_private_key(key_pem, passphrase if encrypted else None)
    except (ValueError, TypeError) as e:
        raise PkiError("cannot decrypt the CA key: the passphrase is wrong") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an EC key")
    return CertificateAuthority(key=key, certificate=cert)


def issue_server_certificate(
    ca: CertificateAuthority, hostnames: Iterable[str], now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the broker and the HTTPS API: localhost, loopback, and `hostnames`."""
    now = now or utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "thingward server")]))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_VALIDITY, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    cert = _key_identifiers(builder, key.public_key(), ca).sign(ca.key, hashes.SHA256())
    return key, cert


def thing_uri(thing_name: str) -> str:
    return THING_URI_PREFIX + thing_name


def issue_device_certificate(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    thing_name: str,
    validity: dt.timedelta,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A client certificate for `thing_name` from an already checked CSR: CN and SAN URI carry the name."""
    now = now or utcnow()
    public_key = csr.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing_name)]))
        .issuer_name(ca.name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + validity, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(thing_uri(thing_name))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return _key_identifiers(builder, public_key, ca).sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[tuple[int, dt.datetime]],
    now: dt.datetime | None = None,
    validity: dt.timedelta = CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """A CRL listing (serial, revocation time) pairs, valid for `validity` from `now`."""
    now = now or utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.name)
        .last_update(now - BACKDATE)
        .next_update(now + validity)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def thing_name_from_certificate(cert: x509.Certificate) -> str | None:
    """The thing a device certificate names: the SAN URI, which must agree with the CN; else None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(THING_URI_PREFIX)]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(uris) != 1 or len(cns) != 1:
        return None
    name = uris[0][len(THING_URI_PREFIX) :]
    return name if cns[0].value == name else None


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: the same key gives the same value in any certificate or CSR."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()
