"""Checks on certificate signing requests from devices: parse, signature, key strength, subject."""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from thingward.errors import CsrError

# Curves a device may use. Anything else (including binary and small curves) is refused.
ALLOWED_CURVES: frozenset[str] = frozenset({"secp256r1", "secp384r1", "secp521r1"})
MIN_RSA_BITS = 2048
MAX_CSR_BYTES = 16 * 1024

__all__ = [
    "ALLOWED_CURVES",
    "MAX_CSR_BYTES",
    "MIN_RSA_BITS",
    "check_public_key",
    "csr_common_name",
    "parse_device_csr",
]


def check_public_key(key: object) -> None:
    """Refuse weak or unusual keys: RSA under 2048 bits, non-standard curves, unknown key types."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(
                f"RSA key of {key.key_size} bits is too weak: use RSA of at least {MIN_RSA_BITS} bits "
                "or, better, an EC P-256 key"
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ALLOWED_CURVES:
            raise CsrError(
                f"elliptic curve {key.curve.name} is not allowed: use one of {', '.join(sorted(ALLOWED_CURVES))}"
            )
        return
    if isinstance(key, ed25519.Ed25519PublicKey):
        # Valid, but MQTT TLS stacks on devices rarely support it; refuse for interoperability.
        raise CsrError("Ed25519 keys are not supported for device certificates: use an EC P-256 key")
    raise CsrError(f"unsupported key type {type(key).__name__}: use an EC P-256 key")


def csr_common_name(csr: x509.CertificateSigningRequest) -> str:
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1 or not isinstance(common_names[0].value, str):
        raise CsrError("CSR subject must have exactly one common name: the thing name (CN=NAME)")
    return common_names[0].value


def parse_device_csr(pem: bytes | str, expected_name: str | None = None) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check it is fit to become a device certificate (of `expected_name` if given)."""
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"CSR is {len(data)} bytes, more than the {MAX_CSR_BYTES} allowed")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data:
        raise CsrError("not a PEM certificate signing request: expected '-----BEGIN CERTIFICATE REQUEST-----'")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as e:
        raise CsrError(f"malformed CSR: cannot parse the PEM/DER structure ({e})") from e
    try:
        signature_ok = csr.is_signature_valid
        key = csr.public_key()
    except UnsupportedAlgorithm as e:
        raise CsrError(f"CSR uses an unsupported key or signature algorithm ({e}): use an EC P-256 key") from e
    except (ValueError, TypeError) as e:
        raise CsrError(f"CSR has an unsupported or malformed public key ({e})") from e
    if not signature_ok:
        raise CsrError("CSR signature does not verify: sign the CSR with the key it carries, using SHA-256")
    check_public_key(key)
    cn = csr_common_name(csr)
    if expected_name is not None and cn != expected_name:
        raise CsrError(f"CSR subject CN {cn!r} does not name this token's thing: use CN={expected_name}")
    return csr
