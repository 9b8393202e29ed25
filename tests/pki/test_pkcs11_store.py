"""Pkcs11KeyStore against a real SoftHSM2 token: the key is made and kept there, and signs CSRs there."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pkcs11
import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error

from thingward.errors import PkiError
from thingward.pki.csr import parse_device_csr
from thingward.pki.pkcs11_store import DEFAULT_KEY_LABEL, Pkcs11KeyStore, parse_pkcs11_uri

if TYPE_CHECKING:
    from conftest import SoftHsmToken


def make_store(token: SoftHsmToken, key_label: str = DEFAULT_KEY_LABEL) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(token.module_path, token.label, token.pin, key_label)


def spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def open_attacker_session(token: SoftHsmToken) -> pkcs11.Session:
    """A logged-in session of our own, bypassing the store: what malware with the PIN could do."""
    return pkcs11.lib(token.module_path).get_token(token_label=token.label).open(rw=True, user_pin=token.pin)


def test_csr_is_signed_by_the_token_and_accepted_by_the_ca_checks(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    store.generate_key()
    pem = store.build_csr("cam1")

    csr = parse_device_csr(pem, "cam1")  # signature verifies, P-256, exactly one CN
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert spki(key) == spki(store.public_key())
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == "sha256"
    # ecdsa-with-SHA256 must carry no parameters (RFC 5758): strict parsers refuse a NULL there
    request = asn1_csr.CertificationRequest.load(asn1_pem.unarmor(pem)[2])
    assert request["signature_algorithm"]["algorithm"].dotted == "1.2.840.10045.4.3.2"
    assert not request["signature_algorithm"]["parameters"].contents


def test_csr_for_another_name_is_refused_by_the_ca_checks(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    store.generate_key()
    with pytest.raises(Exception, match="does not name this token's thing"):
        parse_device_csr(store.build_csr("cam2"), "cam1")


def test_two_csrs_carry_the_same_token_key(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    store.generate_key()
    first = x509.load_pem_x509_csr(store.build_csr("cam1"))
    second = x509.load_pem_x509_csr(store.build_csr("cam1"))
    assert spki(first.public_key()) == spki(second.public_key())
    assert first.signature != second.signature  # ECDSA is randomised: each was really signed anew


def test_private_key_value_cannot_be_read_from_the_token(softhsm_token: SoftHsmToken) -> None:
    make_store(softhsm_token).generate_key()
    with open_attacker_session(softhsm_token) as session:
        private_key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, DEFAULT_KEY_LABEL)
        attrs = private_key.get_attributes(
            [
                Attribute.TOKEN,
                Attribute.PRIVATE,
                Attribute.SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.ALWAYS_SENSITIVE,
                Attribute.NEVER_EXTRACTABLE,
                Attribute.LOCAL,
                Attribute.DERIVE,
                Attribute.DECRYPT,
            ]
        )
        assert attrs[Attribute.TOKEN] and attrs[Attribute.PRIVATE]
        assert attrs[Attribute.SENSITIVE] and attrs[Attribute.ALWAYS_SENSITIVE]
        assert not attrs[Attribute.EXTRACTABLE] and attrs[Attribute.NEVER_EXTRACTABLE]
        assert attrs[Attribute.LOCAL]  # generated in the token, not imported
        assert not attrs[Attribute.DERIVE] and not attrs[Attribute.DECRYPT]
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            private_key[Attribute.VALUE]


def test_private_key_cannot_be_made_extractable_or_wrapped_out(softhsm_token: SoftHsmToken) -> None:
    make_store(softhsm_token).generate_key()
    with open_attacker_session(softhsm_token) as session:
        private_key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, DEFAULT_KEY_LABEL)
        with pytest.raises(PKCS11Error):
            private_key[Attribute.EXTRACTABLE] = True
        with pytest.raises(PKCS11Error):
            private_key[Attribute.SENSITIVE] = False
        # A session wrapping key the attacker controls: wrapping would hand out the key encrypted to it.
        wrapping_key = session.generate_key(
            KeyType.AES, 256, store=False, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True}
        )
        with pytest.raises(pkcs11.exceptions.KeyUnextractable):
            wrapping_key.wrap_key(private_key, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        # The refusals changed nothing.
        assert private_key[Attribute.SENSITIVE] and not private_key[Attribute.EXTRACTABLE]


def test_second_generate_with_the_same_label_is_refused(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    assert not store.has_key()
    store.generate_key()
    assert store.has_key()
    before = spki(store.public_key())
    with pytest.raises(PkiError, match="refusing to replace a device key"):
        store.generate_key()
    assert spki(store.public_key()) == before
    with open_attacker_session(softhsm_token) as session:
        assert len(list(session.get_objects({Attribute.LABEL: DEFAULT_KEY_LABEL}))) == 2  # one pair only


def test_generate_is_refused_when_a_stray_object_has_the_label(softhsm_token: SoftHsmToken) -> None:
    with open_attacker_session(softhsm_token) as session:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.LABEL: "thingward-device",
                Attribute.VALUE: b"x",
            }
        )
    store = make_store(softhsm_token)
    assert not store.has_key()
    with pytest.raises(PkiError, match="already holds an object labelled"):
        store.generate_key()


def test_keys_with_different_labels_live_side_by_side(softhsm_token: SoftHsmToken) -> None:
    first, second = make_store(softhsm_token, "key-a"), make_store(softhsm_token, "key-b")
    first.generate_key()
    assert not second.has_key()
    second.generate_key()
    assert spki(first.public_key()) != spki(second.public_key())


def test_wrong_pin_is_refused_without_showing_either_pin(
    softhsm_token: SoftHsmToken, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_pin = "wrong-" + softhsm_token.pin[::-1]
    store = Pkcs11KeyStore(softhsm_token.module_path, softhsm_token.label, wrong_pin)
    with pytest.raises(PkiError) as info:
        store.has_key()
    message = str(info.value)
    assert message == f"PKCS#11 login failed: wrong PIN for token {softhsm_token.label!r}"
    assert isinstance(info.value.__cause__, pkcs11.exceptions.PinIncorrect)
    shown = [message, repr(info.value), str(info.value.__cause__), repr(store), caplog.text]
    for text in shown:
        assert wrong_pin not in text and softhsm_token.pin not in text
    assert not make_store(softhsm_token).has_key()  # the failed login left the token usable


def test_unknown_token_label_names_the_tokens_seen(softhsm_token: SoftHsmToken) -> None:
    store = Pkcs11KeyStore(softhsm_token.module_path, "no-such-token", softhsm_token.pin)
    with pytest.raises(PkiError) as info:
        store.has_key()
    message = str(info.value)
    assert "'no-such-token'" in message
    assert f"tokens seen: {softhsm_token.label!r}" in message
    assert softhsm_token.pin not in message


def test_missing_module_is_a_pki_error() -> None:
    store = Pkcs11KeyStore("/nonexistent/libnothing.so", "tok", "1234")
    with pytest.raises(PkiError, match=r"cannot load PKCS#11 module /nonexistent/libnothing\.so"):
        store.has_key()


def test_operations_before_generate_say_what_to_do(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    with pytest.raises(PkiError, match="run generate_key first"):
        store.build_csr("cam1")
    with pytest.raises(PkiError, match="run generate_key first"):
        store.sign(b"challenge")


def test_sign_output_verifies_with_the_public_key(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    store.generate_key()
    challenge = b"nonce-from-the-server:" + bytes(range(64))
    signature = store.sign(challenge)
    public_key = store.public_key()
    public_key.verify(signature, challenge, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, challenge + b"!", ec.ECDSA(hashes.SHA256()))


def test_a_mismatched_public_key_object_is_caught_before_a_signature_leaves(
    softhsm_token: SoftHsmToken,
) -> None:
    """If the public object under the label is not the private key's half, CSRs would fail far away."""
    store = make_store(softhsm_token)
    store.generate_key()
    other = make_store(softhsm_token, "other")
    other.generate_key()
    with open_attacker_session(softhsm_token) as session:
        session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, DEFAULT_KEY_LABEL).destroy()
        other_public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, "other")
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                Attribute.KEY_TYPE: KeyType.EC,
                Attribute.TOKEN: True,
                Attribute.LABEL: DEFAULT_KEY_LABEL,
                Attribute.EC_PARAMS: other_public[Attribute.EC_PARAMS],
                Attribute.EC_POINT: other_public[Attribute.EC_POINT],
            }
        )
    with pytest.raises(PkiError, match="does not verify with its public key"):
        store.sign(b"challenge")
    with pytest.raises(PkiError, match="does not verify with its public key"):
        store.build_csr("cam1")


def test_tls_key_file_is_none(softhsm_token: SoftHsmToken) -> None:
    store = make_store(softhsm_token)
    store.generate_key()
    assert store.tls_key_file() is None


def test_from_uri_uses_the_token_and_object_it_names(softhsm_token: SoftHsmToken) -> None:
    uri = (
        f"pkcs11:token={softhsm_token.label};object=cam%20key;type=private"
        f"?module-path={softhsm_token.module_path}"
    )
    store = Pkcs11KeyStore.from_uri(uri, softhsm_token.pin)
    assert (store.module_path, store.token_label, store.key_label) == (
        softhsm_token.module_path,
        softhsm_token.label,
        "cam key",
    )
    store.generate_key()
    parse_device_csr(store.build_csr("cam1"), "cam1")
    assert make_store(softhsm_token, "cam key").has_key()
    assert not make_store(softhsm_token).has_key()
    assert parse_pkcs11_uri(store.uri) == parse_pkcs11_uri(uri)


def test_from_uri_defaults_the_object_label() -> None:
    store = Pkcs11KeyStore.from_uri("pkcs11:token=My%20Token?module-path=/usr/lib/x.so", "1234")
    assert store.token_label == "My Token"
    assert store.key_label == DEFAULT_KEY_LABEL
    assert store.module_path == "/usr/lib/x.so"


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("pkcs12:token=t?module-path=/x.so", "must start with 'pkcs11:'"),
        ("token=t;object=k", "must start with 'pkcs11:'"),
        ("pkcs11:object=k?module-path=/x.so", "does not name a token"),
        ("pkcs11:token=t;object=k", "does not name the PKCS#11 module"),
        ("pkcs11:token=t?module-path=relative/x.so", "must be an absolute path"),
        ("pkcs11:token=t;token=u?module-path=/x.so", "appears twice"),
        ("pkcs11:token=t;objectk?module-path=/x.so", "is not name=value"),
        ("pkcs11:token=t;;object=k?module-path=/x.so", "is not name=value"),
        ("pkcs11:token=t;serial=1234?module-path=/x.so", "unsupported attribute"),
        ("pkcs11:token=t;type=cert?module-path=/x.so", "does not name a key"),
        ("pkcs11:token=t?module-path=/x.so&pin-value=1234", "must not carry a PIN"),
        ("pkcs11:token=t?module-path=/x.so#frag", "fragment"),
        ("pkcs11:token=%ff?module-path=/x.so", "not percent-encoded UTF-8"),
        ("pkcs11:token=a%0ab?module-path=/x.so", "control characters"),
    ],
)
def test_from_uri_refuses_malformed_uris(uri: str, complaint: str) -> None:
    with pytest.raises(PkiError, match=complaint) as info:
        Pkcs11KeyStore.from_uri(uri, "s3cret-pin")
    assert "s3cret-pin" not in str(info.value)


def test_pin_value_is_not_echoed_in_the_refusal() -> None:
    for uri in (
        "pkcs11:token=t?module-path=/x.so&pin-value=hunter2",
        "pkcs11:token=t;;pin-value=hunter2?module-path=/x.so",
        "pkcs11:token=t?pin-value=hunter2&pin-value=hunter2",
        "pkcs11:token=t;serial=1?module-path=/x.so&pin-value=hunter2",
    ):
        with pytest.raises(PkiError) as info:
            parse_pkcs11_uri(uri)
        assert "hunter2" not in str(info.value)
