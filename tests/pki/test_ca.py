"""The platform CA and the CSR checks: weak, malformed and forged requests are refused with a clear reason."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from thingward.errors import CsrError, PkiError
from thingward.pki import ca as ca_mod
from thingward.pki.csr import parse_device_csr
from thingward.pki.keystore import FileKeyStore, build_csr_with_key


def _csr(key: object, cn: str | None = "cam1") -> bytes:
    names = (
        [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_device_certificate_carries_thing_name_in_cn_and_san_uri() -> None:
    authority = ca_mod.build_root_ca("test")
    csr = parse_device_csr(build_csr_with_key(ec.generate_private_key(ec.SECP256R1()), "cam1"), "cam1")
    cert = ca_mod.issue_device_certificate(authority, csr, "cam1", dt.timedelta(days=90))
    assert ca_mod.thing_name_from_certificate(cert) == "cam1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=90) <= lifetime <= dt.timedelta(days=90, minutes=10)
    cert.verify_directly_issued_by(authority.certificate)


def test_certificate_whose_cn_and_san_disagree_names_no_thing() -> None:
    authority = ca_mod.build_root_ca("test")
    csr = parse_device_csr(build_csr_with_key(ec.generate_private_key(ec.SECP256R1()), "cam1"), "cam1")
    cert = ca_mod.issue_device_certificate(authority, csr, "cam1", dt.timedelta(days=1))
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam2")]))
        .issuer_name(authority.name)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(1)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    assert ca_mod.thing_name_from_certificate(forged) is None


def test_rsa_1024_csr_refused() -> None:
    with pytest.raises(CsrError, match="1024 bits is too weak"):
        parse_device_csr(_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "cam1")


def test_rsa_2048_csr_accepted() -> None:
    parse_device_csr(_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "cam1")


def test_non_standard_curve_refused() -> None:
    with pytest.raises(CsrError, match="secp256k1 is not allowed"):
        parse_device_csr(_csr(ec.generate_private_key(ec.SECP256K1())), "cam1")


def test_ed25519_refused_with_advice() -> None:
    with pytest.raises(CsrError, match="EC P-256"):
        parse_device_csr(_csr(ed25519.Ed25519PrivateKey.generate()), "cam1")


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"hello", "not a PEM certificate signing request"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "malformed CSR"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * 20000, "more than the"),
    ],
)
def test_malformed_csr_refused_with_reason(pem: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        parse_device_csr(pem, "cam1")


def test_csr_with_forged_signature_refused() -> None:
    good = x509.load_pem_x509_csr(_csr(ec.generate_private_key(ec.SECP256R1())))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit inside the signature
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + __import__("base64").encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    with pytest.raises(CsrError):
        parse_device_csr(pem, "cam1")


def test_csr_for_other_name_or_without_cn_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CsrError, match="does not name this token's thing"):
        parse_device_csr(_csr(key, "cam2"), "cam1")
    with pytest.raises(CsrError, match="exactly one common name"):
        parse_device_csr(_csr(key, None), "cam1")


def test_ca_key_is_0600_and_encrypted_with_passphrase(tmp_path) -> None:
    ca_mod.create_ca(tmp_path / "pki", "test", passphrase=b"correct horse battery staple")
    key_file = tmp_path / "pki" / ca_mod.CA_KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert b"ENCRYPTED" in key_file.read_bytes()
    with pytest.raises(PkiError, match="passphrase is wrong"):
        ca_mod.load_ca(tmp_path / "pki", b"wrong")
    with pytest.raises(PkiError, match="encrypted"):
        ca_mod.load_ca(tmp_path / "pki", None)
    assert ca_mod.load_ca(tmp_path / "pki", b"correct horse battery staple").certificate.subject


def test_create_ca_refuses_to_replace_a_ca_key(tmp_path) -> None:
    ca_mod.create_ca(tmp_path / "pki", "test")
    with pytest.raises(PkiError, match="refusing to replace"):
        ca_mod.create_ca(tmp_path / "pki", "test")


def test_crl_lists_revoked_serials_and_is_signed(tmp_path) -> None:
    authority = ca_mod.build_root_ca("test")
    now = dt.datetime.now(dt.UTC)
    crl = ca_mod.build_crl(authority, [(1234, now)])
    assert crl.is_signature_valid(authority.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(1234) is not None
    assert crl.get_revoked_certificate_by_serial_number(999) is None


def test_file_key_store_writes_0600_and_refuses_loose_permissions(tmp_path) -> None:
    store = FileKeyStore(tmp_path / "device.key")
    store.generate_key()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    parse_device_csr(store.build_csr("cam1"), "cam1")
    with pytest.raises(PkiError, match="refusing to replace"):
        store.generate_key()
    os.chmod(store.path, 0o644)
    with pytest.raises(PkiError, match="0600"):
        store.build_csr("cam1")
