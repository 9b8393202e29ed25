"""A device key store backed by a PKCS#11 token: the EC P-256 key is made in the token and never leaves it.

The token (a secure element, TPM, HSM, or SoftHSM2 in tests) signs the CSR and any challenge; Python only
hashes, encodes and checks. See docs/pkcs11.md for what this can and cannot do for the TLS handshake.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pkcs11
from asn1crypto import csr as asn1_csr  # type: ignore[import-untyped]
from asn1crypto import keys as asn1_keys
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from asn1crypto.core import OctetString  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11.exceptions import (
    MultipleObjectsReturned,
    MultipleTokensReturned,
    NoSuchKey,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserPinNotInitialized,
)
from pkcs11.util.ec import encode_named_curve_parameters

from thingward.errors import PkiError

__all__ = ["DEFAULT_KEY_LABEL", "Pkcs11KeyStore", "Pkcs11Uri", "parse_pkcs11_uri"]

logger = logging.getLogger(__name__)

DEFAULT_KEY_LABEL = "thingward-device"
MAX_TOKEN_LABEL_BYTES = 32  # CK_TOKEN_INFO.label is a 32-byte field
MAX_URI_CHARS = 4096
P256_COORDINATE_BYTES = 32

# DER of the ANSI X9.62 parameters `namedCurve secp256r1`, as CKA_EC_PARAMS holds them.
_P256_EC_PARAMS: bytes = encode_named_curve_parameters("secp256r1")

# PKCS#11 login state is shared by every session of an application, and python-pkcs11 logs out when any
# logged-in session closes: one lock per module keeps one store's close from logging out another's session.
_module_locks: dict[str, threading.RLock] = {}
_module_locks_guard = threading.Lock()


def _lock_for(module_path: str) -> threading.RLock:
    with _module_locks_guard:
        return _module_locks.setdefault(module_path, threading.RLock())


# --- pkcs11: URIs (RFC 7512), the subset a device config needs --------------------------------------------

_PATH_ATTRIBUTES = frozenset({"token", "object", "type"})
_QUERY_ATTRIBUTES = frozenset({"module-path"})
_ALLOWED_OBJECT_TYPES = frozenset({"private", "public"})
_PIN_IN_URI = re.compile(r"(pin-(?:value|source)=)[^;&?#]*", re.IGNORECASE)


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of a `pkcs11:` URI that name a thingward device key."""

    module_path: str
    token_label: str
    key_label: str


def _redact_pin(text: str) -> str:
    return _PIN_IN_URI.sub(r"\1***", text)


def _split_attributes(part: str, separator: str, where: str, uri_for_errors: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    if not part:
        return attributes
    for item in part.split(separator):
        name, equals, raw_value = item.partition("=")
        if not equals or not name:
            raise PkiError(
                f"malformed pkcs11 URI {uri_for_errors!r}: {where} item {_redact_pin(item)!r} is not name=value"
            )
        if name in attributes:
            raise PkiError(f"malformed pkcs11 URI {uri_for_errors!r}: attribute {name!r} appears twice")
        try:
            value = unquote(raw_value, errors="strict")
        except UnicodeDecodeError as e:
            raise PkiError(
                f"malformed pkcs11 URI {uri_for_errors!r}: attribute {name!r} is not percent-encoded UTF-8"
            ) from e
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise PkiError(f"malformed pkcs11 URI {uri_for_errors!r}: attribute {name!r} has control characters")
        attributes[name] = value
    return attributes


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse `pkcs11:token=T;object=K[;type=private]?module-path=/abs/lib.so` (RFC 7512 subset).

    Fails closed: an attribute thingward does not understand is refused rather than ignored, and a PIN in
    the URI (`pin-value`, `pin-source`) is refused because URIs end up in logs and process listings.
    """
    if len(uri) > MAX_URI_CHARS:
        raise PkiError(f"pkcs11 URI is {len(uri)} characters, more than the {MAX_URI_CHARS} allowed")
    # A PIN someone put in the URI anyway must not reach an error message or a log line.
    shown = _redact_pin(uri)
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() != "pkcs11":
        raise PkiError(f"malformed pkcs11 URI {shown!r}: it must start with 'pkcs11:'")
    if "#" in rest:
        raise PkiError(f"malformed pkcs11 URI {shown!r}: a fragment ('#') is not allowed")
    path_part, _, query_part = rest.partition("?")
    path = _split_attributes(path_part, ";", "path", shown)
    query = _split_attributes(query_part, "&", "query", shown)

    for secret_name in ("pin-value", "pin-source"):
        if secret_name in path or secret_name in query:
            raise PkiError(
                f"pkcs11 URI must not carry a PIN ({secret_name}): pass the PIN separately, "
                "for example from an environment variable or a 0600 file"
            )
    unknown = sorted((set(path) - _PATH_ATTRIBUTES) | (set(query) - _QUERY_ATTRIBUTES))
    if unknown:
        raise PkiError(
            f"pkcs11 URI {shown!r} has unsupported attribute(s) {', '.join(unknown)}: thingward understands "
            "token, object and type in the path, and module-path in the query"
        )
    object_type = path.get("type")
    if object_type is not None and object_type not in _ALLOWED_OBJECT_TYPES:
        raise PkiError(f"pkcs11 URI {shown!r}: type={object_type} does not name a key (use type=private)")
    token_label = path.get("token")
    if not token_label:
        raise PkiError(f"pkcs11 URI {shown!r} does not name a token: add token=<label> to the path")
    module_path = query.get("module-path")
    if not module_path:
        raise PkiError(
            f"pkcs11 URI {shown!r} does not name the PKCS#11 module: add ?module-path=/absolute/path/to/module.so"
        )
    if not Path(module_path).is_absolute():
        raise PkiError(f"pkcs11 URI {shown!r}: module-path must be an absolute path (RFC 7512)")
    key_label = path.get("object", DEFAULT_KEY_LABEL)
    if not key_label:
        raise PkiError(f"pkcs11 URI {shown!r}: object= is empty")
    return Pkcs11Uri(module_path=module_path, token_label=token_label, key_label=key_label)


# --- the key store ----------------------------------------------------------------------------------------


def _ec_point_from_attribute(value: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING by the spec; a few tokens return the raw point. Accept both."""
    if len(value) == 1 + 2 * P256_COORDINATE_BYTES and value[0] == 0x04:
        return value
    try:
        point: bytes = OctetString.load(value).native
    except (ValueError, TypeError) as e:
        raise PkiError("token returned a CKA_EC_POINT that is neither DER nor a raw EC point") from e
    return point


class Pkcs11KeyStore:
    """An EC P-256 device key in a PKCS#11 token. Implements `thingward.pki.keystore.KeyStore`.

    The private key is created in the token as a sensitive, non-extractable token object that can only sign;
    its public half is a token object with the same label and id. Every operation opens a logged-in session
    and closes it before returning.
    """

    def __init__(self, module_path: str, token_label: str, pin: str, key_label: str = DEFAULT_KEY_LABEL) -> None:
        if not module_path:
            raise PkiError("a PKCS#11 module path is required")
        if not token_label or len(token_label.encode()) > MAX_TOKEN_LABEL_BYTES:
            raise PkiError(f"token label must be 1 to {MAX_TOKEN_LABEL_BYTES} bytes, got {token_label!r}")
        if not key_label:
            raise PkiError("key label must not be empty")
        if not pin:
            raise PkiError(f"an empty user PIN was given for token {token_label!r}")
        self.module_path = module_path
        self.token_label = token_label
        self.key_label = key_label
        self.__pin = pin  # name-mangled and left out of repr: the PIN is never shown

    @classmethod
    def from_uri(cls, uri: str, pin: str) -> Pkcs11KeyStore:
        """A store for the key a `pkcs11:` URI names, e.g. `pkcs11:token=cam;object=dev?module-path=/x.so`."""
        parsed = parse_pkcs11_uri(uri)
        return cls(parsed.module_path, parsed.token_label, pin, parsed.key_label)

    def __repr__(self) -> str:
        return (
            f"Pkcs11KeyStore(module_path={self.module_path!r}, token_label={self.token_label!r}, "
            f"key_label={self.key_label!r})"
        )

    @property
    def uri(self) -> str:
        """The RFC 7512 URI of the private key (what pkcs11-provider or libp11 take), without a PIN."""
        return (
            f"pkcs11:token={quote(self.token_label, safe='')};object={quote(self.key_label, safe='')};"
            f"type=private?module-path={quote(self.module_path, safe='/')}"
        )

    # -- PKCS#11 plumbing --

    def _library(self) -> Any:
        # pkcs11.lib caches one loaded and initialized library per path for the whole process.
        try:
            return pkcs11.lib(self.module_path)
        except (OSError, RuntimeError) as e:
            raise PkiError(f"cannot load PKCS#11 module {self.module_path}: {e}") from e

    def _token(self) -> Any:
        lib = self._library()
        try:
            return lib.get_token(token_label=self.token_label)
        except NoSuchToken as e:
            seen = self._token_labels(lib)
            raise PkiError(
                f"no PKCS#11 token labelled {self.token_label!r} in {self.module_path}; "
                f"tokens seen: {', '.join(repr(label) for label in seen) or 'none'}"
            ) from e
        except MultipleTokensReturned as e:
            raise PkiError(
                f"more than one PKCS#11 token is labelled {self.token_label!r} in {self.module_path}: "
                "relabel one so the device key is unambiguous"
            ) from e
        except PKCS11Error as e:
            raise PkiError(f"cannot list the tokens of {self.module_path}: {type(e).__name__}") from e

    @staticmethod
    def _token_labels(lib: Any) -> list[str]:
        try:
            return sorted(str(token.label) for token in lib.get_tokens() if TokenFlag.TOKEN_INITIALIZED in token.flags)
        except PKCS11Error:
            return []

    @contextmanager
    def _session(self, rw: bool = False) -> Iterator[Any]:
        """A session logged in as the user; PKCS#11 errors inside become PkiError; always closed."""
        token = self._token()
        with _lock_for(self.module_path):
            try:
                session = token.open(rw=rw, user_pin=self.__pin)
            except PinIncorrect as e:
                raise PkiError(f"PKCS#11 login failed: wrong PIN for token {self.token_label!r}") from e
            except PinLenRange as e:
                raise PkiError(
                    f"PKCS#11 login failed: the PIN for token {self.token_label!r} has a length the token "
                    "does not accept"
                ) from e
            except PinLocked as e:
                raise PkiError(
                    f"PKCS#11 login failed: the user PIN of token {self.token_label!r} is locked; "
                    "the security officer must unlock it"
                ) from e
            except PinExpired as e:
                raise PkiError(f"PKCS#11 login failed: the user PIN of token {self.token_label!r} expired") from e
            except UserPinNotInitialized as e:
                raise PkiError(f"token {self.token_label!r} has no user PIN set: initialise it first") from e
            except PKCS11Error as e:
                raise PkiError(
                    f"cannot open a PKCS#11 session on token {self.token_label!r}: {type(e).__name__}"
                ) from e
            try:
                yield session
            except PKCS11Error as e:
                raise PkiError(
                    f"PKCS#11 operation on key {self.key_label!r} in token {self.token_label!r} failed: "
                    f"{type(e).__name__} {e}".rstrip()
                ) from e
            finally:
                try:
                    session.close()
                except PKCS11Error as e:
                    logger.warning(
                        "closing the PKCS#11 session on token %r failed: %s",
                        self.token_label,
                        type(e).__name__,
                    )

    def _find_key(self, session: Any, object_class: ObjectClass) -> Any | None:
        try:
            return session.get_key(object_class=object_class, key_type=KeyType.EC, label=self.key_label)
        except NoSuchKey:
            return None
        except MultipleObjectsReturned as e:
            raise PkiError(
                f"token {self.token_label!r} holds more than one EC {object_class.name.lower()} labelled "
                f"{self.key_label!r}: the device key is ambiguous"
            ) from e

    def _objects_with_label(self, session: Any) -> list[Any]:
        return list(session.get_objects({Attribute.LABEL: self.key_label}))

    def _require_private_key(self, session: Any) -> Any:
        key = self._find_key(session, ObjectClass.PRIVATE_KEY)
        if key is None:
            raise PkiError(
                f"token {self.token_label!r} has no EC private key labelled {self.key_label!r}: run generate_key first"
            )
        return key

    def _read_public_key(self, session: Any) -> ec.EllipticCurvePublicKey:
        key = self._find_key(session, ObjectClass.PUBLIC_KEY)
        if key is None:
            raise PkiError(
                f"token {self.token_label!r} has no EC public key labelled {self.key_label!r}: run generate_key first"
            )
        if bytes(key[Attribute.EC_PARAMS]) != _P256_EC_PARAMS:
            raise PkiError(f"key {self.key_label!r} in token {self.token_label!r} is not on curve P-256")
        point = _ec_point_from_attribute(bytes(key[Attribute.EC_POINT]))
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError as e:
            raise PkiError(
                f"public key {self.key_label!r} in token {self.token_label!r} is not a valid P-256 point"
            ) from e

    def _sign_in_session(self, session: Any, data: bytes) -> bytes:
        private_key = self._require_private_key(session)
        public_key = self._read_public_key(session)
        digest = hashlib.sha256(data).digest()
        raw = bytes(private_key.sign(digest, mechanism=Mechanism.ECDSA))
        if len(raw) != 2 * P256_COORDINATE_BYTES:
            raise PkiError(f"token {self.token_label!r} returned a {len(raw)}-byte ECDSA signature, not 64")
        signature = encode_dss_signature(
            int.from_bytes(raw[:P256_COORDINATE_BYTES], "big"),
            int.from_bytes(raw[P256_COORDINATE_BYTES:], "big"),
        )
        # A faulty token, or a public key object that does not belong to the private key, must not produce
        # a CSR or challenge answer that fails later and far away.
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as e:
            raise PkiError(
                f"the signature made by key {self.key_label!r} in token {self.token_label!r} does not verify "
                "with its public key: the key pair is inconsistent or the token is faulty"
            ) from e
        return signature

    # -- the KeyStore protocol --

    def has_key(self) -> bool:
        with self._session() as session:
            return self._find_key(session, ObjectClass.PRIVATE_KEY) is not None

    def generate_key(self) -> None:
        """Generate an EC P-256 key pair inside the token. Refuses if any object has the key's label."""
        with self._session(rw=True) as session:
            if self._objects_with_label(session):
                raise PkiError(
                    f"token {self.token_label!r} already holds an object labelled {self.key_label!r}; "
                    "refusing to replace a device key"
                )
            parameters = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: _P256_EC_PARAMS}, local=True
            )
            parameters.generate_keypair(
                id=secrets.token_bytes(16),
                label=self.key_label,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                mechanism=Mechanism.EC_KEY_PAIR_GEN,
                public_template={Attribute.PRIVATE: False, Attribute.MODIFIABLE: False},
                private_template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DERIVE: False,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                },
            )
        logger.info("generated EC P-256 key %r in PKCS#11 token %r", self.key_label, self.token_label)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, read from the token's public key object."""
        with self._session() as session:
            return self._read_public_key(session)

    def sign(self, data: bytes) -> bytes:
        """An ECDSA-SHA256 signature of `data`, DER-encoded, made by the token and checked before return."""
        with self._session() as session:
            return self._sign_in_session(session, data)

    def build_csr(self, common_name: str) -> bytes:
        """A PEM CSR for CN=`common_name` carrying the token's public key, signed by the token."""
        with self._session() as session:
            public_key = self._read_public_key(session)
            spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            info = asn1_csr.CertificationRequestInfo(
                {
                    "version": "v1",
                    "subject": asn1_x509.Name.build({"common_name": common_name}),
                    "subject_pk_info": asn1_keys.PublicKeyInfo.load(spki),
                    "attributes": [],
                }
            )
            signature = self._sign_in_session(session, info.dump())
        request = asn1_csr.CertificationRequest(
            {
                "certification_request_info": info,
                "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                "signature": signature,
            }
        )
        pem: bytes = asn1_pem.armor("CERTIFICATE REQUEST", request.dump())
        return pem

    def tls_key_file(self) -> None:
        """Always None: the key cannot leave the token, so Python's ssl module cannot load it from a file."""
        return None
