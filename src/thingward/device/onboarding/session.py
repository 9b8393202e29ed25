"""The secure session of the provisioning protocol, pure (no sockets): X25519 bound to the label's PoP,
key confirmation both ways, then AES-GCM with a key and a counter per direction.

    app (client)                                             device
      <------------------------------------------------ info (model, id, versions)   [clear]
      start {client_public, client_nonce} ---------------->                         [clear]
      <---------------------------- {device_public, device_nonce}                   [clear]
      confirm {HMAC(kc_client, "client" | transcript)} --->  checked: a wrong one is a failed proof
      <------------------- {HMAC(kc_device, "device" | transcript)}  checked by the app
      <============ AES-256-GCM frames: counter | ciphertext, one key per direction ============>

The keys come from HKDF-SHA256 over the X25519 secret and the PoP, salted with the hash of everything
said in clear (the info frame included, so a changed model or version list fails the confirmation). The
app proves first, so a stranger who connects to the device learns nothing to guess the PoP with offline;
the device proves second, so the app never hands credentials to an impostor. `HandshakeError` and
`SessionError` say nothing about which check failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from thingward.errors import ThingwardError

PROTOCOL = "thingward-provisioning"
VERSION = 1
SECURITY = "x25519-pop-hkdf-aes256gcm"
NONCE_BYTES = 16
_KEY_LABEL = b"thingward provisioning v1 session keys"
_CLIENT_TO_DEVICE = b"c2d\x00"
_DEVICE_TO_CLIENT = b"d2c\x00"
_COUNTER = struct.Struct(">Q")
MAX_MESSAGES = 2**32  # per direction; a provisioning session sends a handful


class HandshakeError(ThingwardError):
    """The key agreement failed: a wrong PoP on one side, or a message changed on the way."""


class SessionError(ThingwardError):
    """A session frame was refused: changed, replayed, out of order, or from another session."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, size: int, what: str) -> bytes:
    """Decode a base64 field of a handshake message that must hold exactly `size` bytes."""
    if not isinstance(text, str) or len(text) > 4 * size:
        raise HandshakeError(f"the {what} is missing or too long")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as e:
        raise HandshakeError(f"the {what} is not base64") from e
    if len(raw) != size:
        raise HandshakeError(f"the {what} has {len(raw)} bytes, not {size}")
    return raw


def transcript_hash(info: bytes, client_public: bytes, client_nonce: bytes, device_public: bytes,
                    device_nonce: bytes) -> bytes:  # fmt: skip
    digest = hashlib.sha256(PROTOCOL.encode() + b"\x00")
    for part in (info, client_public, client_nonce, device_public, device_nonce):
        digest.update(_COUNTER.pack(len(part)) + part)
    return digest.digest()


@dataclass(frozen=True)
class _Keys:
    client_to_device: bytes
    device_to_client: bytes
    client_confirm: bytes
    device_confirm: bytes


def _derive(shared: bytes, pop: bytes, transcript: bytes) -> _Keys:
    material = HKDF(algorithm=hashes.SHA256(), length=128, salt=transcript, info=_KEY_LABEL).derive(
        shared + hashlib.sha256(b"thingward pop\x00" + pop).digest()
    )
    return _Keys(material[0:32], material[32:64], material[64:96], material[96:128])


def _exchange(private: X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError as e:  # a low-order point gives an all-zero secret: refused by cryptography
        raise HandshakeError("the peer's public key is not usable") from e


def _public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _confirmation(key: bytes, role: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, role + b"\x00" + transcript, hashlib.sha256).digest()


class SecureChannel:
    """AES-256-GCM both ways after the handshake. A frame is an 8-byte counter then the ciphertext; the
    receiver takes only the next counter, so a replayed, dropped-and-resent or reordered frame is refused."""

    def __init__(self, send_key: bytes, receive_key: bytes, send_direction: bytes, receive_direction: bytes,
                 session_id: bytes) -> None:  # fmt: skip
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self._send_direction, self._receive_direction = send_direction, receive_direction
        self._session_id = session_id
        self._sent = 0
        self._expected = 0

    def seal(self, plaintext: bytes) -> bytes:
        if self._sent >= MAX_MESSAGES:
            raise SessionError("the session has sent all the messages it may; start a new one")
        counter = _COUNTER.pack(self._sent)
        self._sent += 1
        nonce = self._send_direction + counter
        return counter + self._send.encrypt(nonce, plaintext, self._session_id + self._send_direction + counter)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < _COUNTER.size + 16:
            raise SessionError("a session frame was refused")
        counter = frame[: _COUNTER.size]
        if _COUNTER.unpack(counter)[0] != self._expected:
            raise SessionError("a session frame was refused")
        nonce = self._receive_direction + counter
        try:
            plaintext = self._receive.decrypt(
                nonce, frame[_COUNTER.size :], self._session_id + self._receive_direction + counter
            )
        except InvalidTag:
            raise SessionError("a session frame was refused") from None
        self._expected += 1
        return plaintext


class ClientHandshake:
    """The app's side: knows the PoP from the label and the info frame the device sent."""

    def __init__(self, pop: bytes, info: bytes) -> None:
        self._pop, self._info = pop, info
        self._private = X25519PrivateKey.generate()
        self.public = _public_bytes(self._private)
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self._keys: _Keys | None = None
        self._transcript = b""

    def start_message(self) -> dict[str, object]:
        return {"type": "start", "version": VERSION, "client_public": b64(self.public), "client_nonce": b64(self.nonce)}

    def confirm_message(self, reply: dict[str, object]) -> dict[str, object]:
        """From the device's keys and nonce, the app's proof that it holds the PoP."""
        device_public = unb64(reply.get("device_public"), 32, "device public key")
        device_nonce = unb64(reply.get("device_nonce"), NONCE_BYTES, "device nonce")
        shared = _exchange(self._private, device_public)
        self._transcript = transcript_hash(self._info, self.public, self.nonce, device_public, device_nonce)
        self._keys = _derive(shared, self._pop, self._transcript)
        proof = _confirmation(self._keys.client_confirm, b"client", self._transcript)
        return {"type": "confirm", "client_confirm": b64(proof)}

    def finish(self, reply: dict[str, object]) -> SecureChannel:
        """Check the device's proof; only a device that holds the same PoP gets a channel."""
        if self._keys is None:
            raise HandshakeError("the handshake is not at its last step")
        presented = unb64(reply.get("device_confirm"), 32, "device confirmation")
        expected = _confirmation(self._keys.device_confirm, b"device", self._transcript)
        if not hmac.compare_digest(presented, expected):
            raise HandshakeError("the device did not prove it holds the label's code: wrong label, or an impostor")
        return SecureChannel(self._keys.client_to_device, self._keys.device_to_client, _CLIENT_TO_DEVICE,
                             _DEVICE_TO_CLIENT, self._transcript[:16])  # fmt: skip


class DeviceHandshake:
    """The device's side: holds its own PoP and the info frame it sent."""

    def __init__(self, pop: bytes, info: bytes) -> None:
        self._pop, self._info = pop, info
        self._keys: _Keys | None = None
        self._transcript = b""

    def respond(self, start: dict[str, object]) -> dict[str, object]:
        if start.get("type") != "start" or start.get("version") != VERSION:
            raise HandshakeError(f"expected a 'start' message of protocol version {VERSION}")
        client_public = unb64(start.get("client_public"), 32, "client public key")
        client_nonce = unb64(start.get("client_nonce"), NONCE_BYTES, "client nonce")
        private = X25519PrivateKey.generate()
        device_public = _public_bytes(private)
        device_nonce = secrets.token_bytes(NONCE_BYTES)
        shared = _exchange(private, client_public)
        self._transcript = transcript_hash(self._info, client_public, client_nonce, device_public, device_nonce)
        self._keys = _derive(shared, self._pop, self._transcript)
        return {"type": "keys", "device_public": b64(device_public), "device_nonce": b64(device_nonce)}

    def verify(self, confirm: dict[str, object]) -> tuple[dict[str, object], SecureChannel]:
        """Check the app's proof; a wrong one raises HandshakeError (the caller counts a failed proof)."""
        if self._keys is None or confirm.get("type") != "confirm":
            raise HandshakeError("expected a 'confirm' message")
        presented = unb64(confirm.get("client_confirm"), 32, "client confirmation")
        expected = _confirmation(self._keys.client_confirm, b"client", self._transcript)
        if not hmac.compare_digest(presented, expected):
            raise HandshakeError("key confirmation failed")
        proof = _confirmation(self._keys.device_confirm, b"device", self._transcript)
        channel = SecureChannel(self._keys.device_to_client, self._keys.client_to_device, _DEVICE_TO_CLIENT,
                                _CLIENT_TO_DEVICE, self._transcript[:16])  # fmt: skip
        return {"type": "confirmed", "device_confirm": b64(proof)}, channel
