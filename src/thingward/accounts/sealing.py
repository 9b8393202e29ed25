"""TOTP keys at rest: sealed with AES-256-GCM under a key derived from the data dir's `audit.key`.

A TOTP key must be readable by the server (it computes the codes), so it cannot be hashed. Sealing it
with a key kept outside the database means a stolen database file (or a backup, or a SQL injection)
yields no second factor. The sealing key is derived with HKDF from `audit.key` (32 random bytes, 0600,
never in the database) under its own label, so it is never the audit key itself. The sealed value is
bound to the user's id (associated data): it cannot be copied onto another account.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from thingward.errors import ConfigError

_LABEL = b"thingward accounts: TOTP key sealing v1"
_VERSION = b"\x01"


def derived_key(session: Session, label: bytes) -> bytes:
    """A key for one purpose (`label`), derived from the data dir's key; never the data dir's key itself."""
    root = session.info.get("audit_key")
    if not root:
        raise ConfigError("no data dir key: open the data dir through thingward.platform.Platform")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(bytes(root))


def sealing_key(session: Session) -> bytes:
    return derived_key(session, _LABEL)


def seal(key: bytes, user_id: int, secret: str) -> bytes:
    nonce = os.urandom(12)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, secret.encode(), _aad(user_id))


def unseal(key: bytes, user_id: int, sealed: bytes) -> str:
    if sealed[:1] != _VERSION:
        raise ConfigError("a sealed TOTP key of an unknown format: was the database written by a newer thingward?")
    try:
        return AESGCM(key).decrypt(sealed[1:13], sealed[13:], _aad(user_id)).decode()
    except InvalidTag as e:
        raise ConfigError(
            "a sealed TOTP key does not open: the data dir key (audit.key) is not the one it was sealed with"
        ) from e


def _aad(user_id: int) -> bytes:
    return f"user:{user_id}".encode()
