"""OTA signing keys: the offline root key set and the online targets/snapshot/timestamp keys.

`thingward ota keys init --out DIR` writes

    DIR/keys.json             public: every key and the root threshold (safe to copy anywhere)
    DIR/root/root-N.pem       offline root keys, 0600, encrypted when a passphrase is given
    DIR/online/ROLE.pem       online keys for targets, snapshot and timestamp, 0600

`DIR/online` goes to the server (`thingward ota init` copies it into the data dir); `DIR/root` goes offline
and comes back only to sign a new root. Signing goes through securesystemslib signers, so an online key
can also live in a PKCS#11 token (an `hsm:` URI) instead of a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from thingward.errors import InvalidInputError, OtaError
from thingward.pki.files import write_atomic, write_secret

KEYS_FILE = "keys.json"
ROOT_DIR = "root"
ONLINE_DIR = "online"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
MAX_ROOT_KEYS = 16


@dataclass(frozen=True)
class KeySet:
    """The public side of a key ceremony: root keys with their threshold, and one key per online role."""

    root_threshold: int
    root_keys: tuple[Key, ...]
    online_keys: dict[str, Key]

    def to_dict(self) -> dict[str, object]:
        return {
            "root": {"threshold": self.root_threshold, "keys": {k.keyid: k.to_dict() for k in self.root_keys}},
            "online": {role: {"keyid": k.keyid, "key": k.to_dict()} for role, k in self.online_keys.items()},
        }

    @classmethod
    def load(cls, key_dir: Path) -> KeySet:
        path = key_dir / KEYS_FILE
        try:
            raw = json.loads(path.read_text())
            root_keys = tuple(Key.from_dict(keyid, dict(k)) for keyid, k in raw["root"]["keys"].items())
            online = {role: Key.from_dict(v["keyid"], dict(v["key"])) for role, v in raw["online"].items()}
            threshold = int(raw["root"]["threshold"])
        except FileNotFoundError:
            raise OtaError(f"{path} is missing: make the keys with 'thingward ota keys init --out {key_dir}'") from None
        except (ValueError, KeyError, TypeError) as e:
            raise OtaError(f"{path} is not a key set written by 'thingward ota keys init': {e}") from None
        if set(online) != set(ONLINE_ROLES):
            raise OtaError(f"{path} must name one key for each of {', '.join(ONLINE_ROLES)}")
        return cls(threshold, root_keys, online)


def _pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _public(key: Ed25519PrivateKey) -> SSlibKey:
    return SSlibKey.from_crypto(key.public_key())


def create_key_set(out: Path, root_keys: int = 3, root_threshold: int = 2, passphrase: bytes | None = None) -> KeySet:
    """Make `root_keys` offline root keys (any `root_threshold` of them sign a root) and the online keys."""
    if not 1 <= root_threshold <= root_keys <= MAX_ROOT_KEYS:
        raise InvalidInputError(
            f"a root threshold of {root_threshold} of {root_keys} keys is not possible: "
            f"need 1 <= threshold <= keys <= {MAX_ROOT_KEYS}"
        )
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError(f"{out} exists and is not empty; refusing to overwrite keys")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    roots = []
    for n in range(1, root_keys + 1):
        private = Ed25519PrivateKey.generate()
        write_secret(out / ROOT_DIR / f"root-{n}.pem", _pem(private, passphrase))
        roots.append(_public(private))
    online: dict[str, Key] = {}
    for role in ONLINE_ROLES:
        # Online keys are used unattended by the server, like its TLS key: a 0600 file, not encrypted.
        private = Ed25519PrivateKey.generate()
        write_secret(out / ONLINE_DIR / f"{role}.pem", _pem(private, None))
        online[role] = _public(private)
    for sub in (ROOT_DIR, ONLINE_DIR):
        os.chmod(out / sub, 0o700)
    key_set = KeySet(root_threshold, tuple(roots), online)
    write_atomic(out / KEYS_FILE, json.dumps(key_set.to_dict(), indent=2).encode())
    return key_set


def load_root_signers(key_dir: Path, passphrase: bytes | None = None) -> list[Signer]:
    """Every root key found in `key_dir/root`, each checked against the public key set."""
    key_set = KeySet.load(key_dir)
    by_id = {k.keyid: k for k in key_set.root_keys if isinstance(k, SSlibKey)}
    signers: list[Signer] = []
    for path in sorted((key_dir / ROOT_DIR).glob("root-*.pem")):
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), passphrase)
        except TypeError:
            raise OtaError(f"{path} is encrypted: give its passphrase (--passphrase-env NAME)") from None
        except ValueError:
            raise OtaError(f"{path} cannot be read: wrong passphrase, or not a PEM private key") from None
        public = SSlibKey.from_crypto(private.public_key())
        if public.keyid not in by_id:
            raise OtaError(f"{path} is not one of the root keys listed in {key_dir / KEYS_FILE}")
        signers.append(CryptoSigner(private, by_id[public.keyid]))
    if len(signers) < key_set.root_threshold:
        raise OtaError(
            f"{key_dir / ROOT_DIR} holds {len(signers)} root key(s); signing a root needs {key_set.root_threshold}"
        )
    return signers


def online_signer(uri: str, public: Key) -> Signer:
    """Load an online signer from its URI (`file2:/path` or a PKCS#11 `hsm:` URI)."""
    try:
        return Signer.from_priv_key_uri(uri, public)
    except (OSError, ValueError) as e:
        raise OtaError(f"the OTA signing key {uri} cannot be loaded: {e}") from None
