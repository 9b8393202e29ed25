"""OTA signing keys: the offline root key set and the online targets/snapshot/timestamp keys.

`thingward ota keys init --out DIR` writes

    DIR/keys.json             public: every key and the root threshold (safe to copy anywhere)
    DIR/root/root-N.pem       offline root keys, 0600, encrypted when a passphrase is given
    DIR/online/ROLE.pem       online keys for targets, snapshot and timestamp, 0600
    DIR/online/ROLE.json      instead of ROLE.pem for a role whose key is in a PKCS#11 token (URI, module)

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
from securesystemslib.signer import CryptoSigner, HSMSigner, Key, Signer, SSlibKey

from thingward.errors import InvalidInputError, OtaError
from thingward.pki.files import write_atomic, write_secret

KEYS_FILE = "keys.json"
ROOT_DIR = "root"
ONLINE_DIR = "online"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
MAX_ROOT_KEYS = 16
PKCS11_PIN_ENV = "THINGWARD_OTA_PKCS11_PIN"


@dataclass(frozen=True)
class Pkcs11Key:
    """An online role's key kept in a PKCS#11 token: an EC P-256 key pair made there (e.g. with pkcs11-tool)."""

    role: str
    module: str
    token_label: str
    key_id: int  # the key pair's CKA_ID as an integer (pkcs11-tool --id 02 -> 2)


def _pkcs11_pin(_what: str) -> str:
    pin = os.environ.get(PKCS11_PIN_ENV)
    if not pin:
        raise OtaError(f"the PKCS#11 PIN is read from ${PKCS11_PIN_ENV}, which is not set or empty")
    return pin


def _import_pkcs11_key(key: Pkcs11Key) -> tuple[str, SSlibKey]:
    # securesystemslib's HSMSigner finds its module through this variable, when importing and when signing.
    os.environ["PYKCS11LIB"] = key.module
    try:
        return HSMSigner.import_(key.key_id, key.token_label, _pkcs11_pin)
    except ValueError as e:
        raise OtaError(
            f"no usable EC P-256 key with id {key.key_id} in PKCS#11 token {key.token_label!r}: {e}"
        ) from None


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


def create_key_set(
    out: Path,
    root_keys: int = 3,
    root_threshold: int = 2,
    passphrase: bytes | None = None,
    pkcs11_keys: tuple[Pkcs11Key, ...] = (),
) -> KeySet:
    """Make `root_keys` offline root keys (any `root_threshold` of them sign a root) and the online keys.

    A role named in `pkcs11_keys` uses that token key instead of a new file key.
    """
    in_tokens = {k.role: k for k in pkcs11_keys}
    if not set(in_tokens) <= set(ONLINE_ROLES):
        raise InvalidInputError(f"a PKCS#11 key can serve {', '.join(ONLINE_ROLES)}; not {sorted(in_tokens)}")
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
        if role in in_tokens:
            uri, public = _import_pkcs11_key(in_tokens[role])
            reference = {"uri": uri, "pkcs11_module": in_tokens[role].module}
            write_atomic(out / ONLINE_DIR / f"{role}.json", json.dumps(reference).encode())
            online[role] = public
            continue
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


def online_signer(uri: str, public: Key, pkcs11_module: str | None = None) -> Signer:
    """Load an online signer from its URI (`file2:/path`, or a PKCS#11 `hsm:KEYID?label=TOKEN` URI)."""
    try:
        if uri.startswith(f"{HSMSigner.SCHEME}:"):
            if not pkcs11_module:
                raise OtaError(f"the PKCS#11 signer {uri} names no module")
            os.environ["PYKCS11LIB"] = pkcs11_module
            return Signer.from_priv_key_uri(uri, public, _pkcs11_pin)
        return Signer.from_priv_key_uri(uri, public)
    except (OSError, ValueError) as e:
        raise OtaError(f"the OTA signing key {uri} cannot be loaded: {e}") from None
