"""The TUF repository of a data dir: metadata made and signed with python-tuf, images stored by hash.

Layout under `DATA_DIR/ota/`:

    metadata/N.root.json, root.json        every root version (clients walk the chain), and the newest
    metadata/N.targets.json, N.snapshot.json, timestamp.json
                                           consistent snapshots: a client mid-update never sees a mix
    targets/MODEL/SHA256.VERSION.img       images, content-addressed (the consistent-snapshot target name)
    targets/MODEL/SHA256.NEW.from-OLD.delta
                                           binary deltas between two images (ota/delta.py), signed the same way
    keys/ROLE-KEYID.pem, signers.json      the online keys (0600) and the signer URI for each role

The root keys are never here: root.json is signed offline (`thingward ota init`, `thingward ota root
rotate`) and the server signs targets, snapshot and timestamp with online keys only. Writers take a file
lock, and every file is replaced atomically, so the HTTPS door can serve while a publish runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from thingward.errors import ConflictError, OtaError
from thingward.ota.keys import ONLINE_DIR, ONLINE_ROLES, KeySet, load_root_signers, online_signer
from thingward.pki.files import SECRET_MODE, write_atomic, write_secret

logger = logging.getLogger(__name__)

REPOSITORY_DIR = "ota"
SIGNERS_FILE = "signers.json"
_LOCK_FILE = ".lock"

# What the HTTPS door may serve: nothing else under the repository, whatever the URL says.
METADATA_NAME = re.compile(r"^(?:[1-9][0-9]{0,9}\.)?(?:root|targets|snapshot|timestamp)\.json$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TARGET_FILE_NAME = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9_.+!-]{1,80}\.(?:img|delta)$")
TARGET_SUFFIXES = (".img", ".delta")


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's signature is good for. The timestamp is short and re-signed by the server."""

    root: dt.timedelta = dt.timedelta(days=365)
    targets: dt.timedelta = dt.timedelta(days=90)
    snapshot: dt.timedelta = dt.timedelta(days=7)
    timestamp: dt.timedelta = dt.timedelta(hours=6)

    def of(self, role: str) -> dt.timedelta:
        value: dt.timedelta = getattr(self, role)
        return value


def _now() -> dt.datetime:
    # TUF metadata carries whole seconds.
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _sign(md: Metadata[Any], signer: Signer) -> None:
    try:
        md.sign(signer)
    except OtaError:
        raise
    except Exception as e:
        # Signers are pluggable (a file, a PKCS#11 token): whatever a backend raises becomes one clear error.
        raise OtaError(f"signing {md.signed.type} metadata failed ({type(e).__name__}): {e}") from e


class OtaRepository:
    """A TUF repository on disk. Open it with `OtaRepository(path)`; create it with `initialise`."""

    def __init__(self, path: Path, lifetimes: Lifetimes | None = None) -> None:
        self.path = path
        self.lifetimes = lifetimes or Lifetimes()
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.keys_dir = path / "keys"

    @classmethod
    def for_data_dir(cls, data_dir: Path, lifetimes: Lifetimes | None = None) -> OtaRepository:
        return cls(data_dir / REPOSITORY_DIR, lifetimes)

    @property
    def exists(self) -> bool:
        return (self.metadata_dir / "root.json").is_file()

    def require(self) -> None:
        if not self.exists:
            raise OtaError(
                f"no OTA repository at {self.path}: make keys with 'thingward ota keys init --out DIR' "
                "and create it with 'thingward ota init --keys DIR'"
            )

    # -- creating ---------------------------------------------------------------------------------------

    @classmethod
    def initialise(
        cls,
        path: Path,
        key_dir: Path,
        passphrase: bytes | None = None,
        lifetimes: Lifetimes | None = None,
        now: dt.datetime | None = None,
    ) -> OtaRepository:
        """Create the repository: root v1 signed by the root threshold, and empty targets, snapshot, timestamp."""
        repo = cls(path, lifetimes)
        if repo.exists:
            raise ConflictError(f"an OTA repository exists at {path}; rotate its root with 'thingward ota root rotate'")
        key_set = KeySet.load(key_dir)
        root_signers = load_root_signers(key_dir, passphrase)
        now = now or _now()
        root = Root(expires=now + repo.lifetimes.root, consistent_snapshot=True)
        for key in key_set.root_keys:
            root.add_key(key, Root.type)
        root.roles[Root.type].threshold = key_set.root_threshold
        for role, key in key_set.online_keys.items():
            root.add_key(key, role)
        signed_root = Metadata(root)
        for signer in root_signers:
            signed_root.sign(signer, append=True)
        with repo._locked():
            try:
                repo._install_online_keys(key_dir, key_set)
                repo._write_root(signed_root)
                targets = Metadata(Targets(expires=now + repo.lifetimes.targets))
                snapshot = Metadata(Snapshot(expires=now + repo.lifetimes.snapshot))
                timestamp = Metadata(Timestamp(expires=now + repo.lifetimes.timestamp))
                # Versions start at 1; _publish bumps them, so start one below.
                targets.signed.version = snapshot.signed.version = timestamp.signed.version = 0
                repo._publish(targets, snapshot, timestamp, now, sign_targets=True)
            except BaseException:
                # Half a repository (a root but no timestamp, say) would block a second try: leave none.
                shutil.rmtree(repo.metadata_dir, ignore_errors=True)
                shutil.rmtree(repo.keys_dir, ignore_errors=True)
                raise
        return repo

    def _install_online_keys(self, key_dir: Path, key_set: KeySet) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.keys_dir, 0o700)
        signers: dict[str, dict[str, Any]] = {}
        for role, key in key_set.online_keys.items():
            token_reference = key_dir / ONLINE_DIR / f"{role}.json"
            if token_reference.is_file():
                reference = json.loads(token_reference.read_text())
                signers[role] = {**reference, "keyid": key.keyid, "key": key.to_dict()}
                continue
            source = key_dir / ONLINE_DIR / f"{role}.pem"
            try:
                data = source.read_bytes()
            except FileNotFoundError:
                raise OtaError(f"{source} is missing: the online {role} key is needed on the server") from None
            target = self.keys_dir / f"{role}-{key.keyid[:16]}.pem"
            write_secret(target, data)
            signers[role] = {"uri": f"file2:{target.resolve()}", "keyid": key.keyid, "key": key.to_dict()}
        write_secret(self.keys_dir / SIGNERS_FILE, json.dumps(signers, indent=2).encode())
        # A rotation retires the old online keys: none stays on the server to be stolen later.
        in_use = {str(entry["uri"]).removeprefix("file2:") for entry in signers.values()}
        for stale in self.keys_dir.glob("*.pem"):
            if str(stale.resolve()) not in in_use:
                stale.unlink()

    # -- reading ----------------------------------------------------------------------------------------

    def _load(self, name: str, kind: type[Signed]) -> Metadata[Any]:
        path = self.metadata_dir / f"{name}.json"
        try:
            md: Metadata[Any] = Metadata.from_file(str(path))
        except FileNotFoundError:
            self.require()
            raise OtaError(f"{path} is missing from the OTA repository") from None
        if not isinstance(md.signed, kind):
            raise OtaError(f"{path} does not hold {kind.type} metadata")
        return md

    def root(self) -> Metadata[Root]:
        return self._load(Root.type, Root)

    def targets(self) -> Metadata[Targets]:
        return self._load(Targets.type, Targets)

    def snapshot(self) -> Metadata[Snapshot]:
        return self._load(Snapshot.type, Snapshot)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load(Timestamp.type, Timestamp)

    def metadata_file(self, name: str) -> Path | None:
        """The file for a metadata URL name (e.g. `3.root.json`, `timestamp.json`), or None."""
        if not METADATA_NAME.match(name):
            return None
        path = self.metadata_dir / name
        return path if path.is_file() else None

    def target_file(self, model: str, name: str) -> Path | None:
        """The stored file for a target URL (`MODEL/SHA256.VERSION.img`, or a `.delta`), or None."""
        if not MODEL_NAME.match(model) or not TARGET_FILE_NAME.match(name) or model in {".", ".."}:
            return None
        path = self.targets_dir / model / name
        return path if path.is_file() else None

    def list_targets(self) -> list[TargetFile]:
        return sorted(self.targets().signed.targets.values(), key=lambda t: t.path)

    # -- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path / _LOCK_FILE, os.O_CREAT | os.O_RDWR, SECRET_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _signer(self, role: str, root: Root) -> Signer:
        path = self.keys_dir / SIGNERS_FILE
        try:
            entry = json.loads(path.read_text())[role]
            public = Key.from_dict(entry["keyid"], dict(entry["key"]))
        except FileNotFoundError:
            raise OtaError(f"{path} is missing: the server cannot sign {role} metadata") from None
        except (ValueError, KeyError, TypeError) as e:
            raise OtaError(f"{path} has no usable signer for {role}: {e}") from None
        if public.keyid not in root.roles[role].keyids:
            raise OtaError(f"the {role} key in {path} is not one the root trusts for {role}")
        return online_signer(str(entry["uri"]), public, entry.get("pkcs11_module"))

    def _write(self, md: Metadata[Any], *names: str) -> None:
        data = md.to_bytes()
        for name in names:
            write_atomic(self.metadata_dir / name, data)

    def _write_root(self, root: Metadata[Root]) -> None:
        self._write(root, f"{root.signed.version}.root.json", "root.json")

    def _publish(
        self,
        targets: Metadata[Targets],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp],
        now: dt.datetime,
        sign_targets: bool,
    ) -> None:
        """Sign and write a new targets (when asked), snapshot and timestamp; the timestamp goes last."""
        root = self.root().signed
        if sign_targets:
            targets.signed.version += 1
            targets.signed.expires = now + self.lifetimes.targets
            targets.signatures.clear()
            _sign(targets, self._signer(Targets.type, root))
            self._write(targets, f"{targets.signed.version}.targets.json", "targets.json")
        snapshot.signed.version += 1
        snapshot.signed.expires = now + self.lifetimes.snapshot
        snapshot.signed.meta = {"targets.json": MetaFile(version=targets.signed.version)}
        snapshot.signatures.clear()
        _sign(snapshot, self._signer(Snapshot.type, root))
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json", "snapshot.json")
        self._sign_timestamp(timestamp, snapshot.signed.version, now)

    def _sign_timestamp(self, timestamp: Metadata[Timestamp], snapshot_version: int, now: dt.datetime) -> None:
        timestamp.signed.version += 1
        timestamp.signed.expires = now + self.lifetimes.timestamp
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot_version)
        timestamp.signatures.clear()
        _sign(timestamp, self._signer(Timestamp.type, self.root().signed))
        self._write(timestamp, "timestamp.json")

    def add_target(
        self,
        target_path: str,
        image: Path,
        custom: dict[str, Any],
        now: dt.datetime | None = None,
        check: Callable[[Targets], None] | None = None,
    ) -> TargetFile:
        """Store `image` under its hash and sign a new targets/snapshot/timestamp that lists it.

        `check` sees the current targets under the writers' lock and may refuse by raising, so a rule
        across targets (versions only go up) holds against a publish racing in another process.
        """
        model, _, file_name = target_path.partition("/")
        if not MODEL_NAME.match(model) or not file_name.endswith(TARGET_SUFFIXES):
            raise OtaError(f"target path {target_path!r} is not MODEL/VERSION.img (or MODEL/NAME.delta)")
        now = now or _now()
        with self._locked():
            targets = self.targets()
            if check is not None:
                check(targets.signed)
            if target_path in targets.signed.targets:
                raise ConflictError(f"{target_path} is published already; publish a new version instead")
            info = TargetFile.from_file(target_path, str(image), ["sha256"])
            info.unrecognized_fields["custom"] = custom
            stored = self.targets_dir / model / f"{info.hashes['sha256']}.{file_name}"
            if not TARGET_FILE_NAME.match(stored.name):
                raise OtaError(f"target file name {stored.name!r} has characters a URL path cannot carry safely")
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_name(f".{stored.name}.tmp")
            shutil.copyfile(image, tmp)
            try:
                with tmp.open("rb") as f:
                    # The copy is what is served: hash it again, so a file changed under us is not signed.
                    info.verify_length_and_hashes(f)
            except LengthOrHashMismatchError:
                tmp.unlink()
                raise OtaError(f"{image} changed while it was being published; publish it again") from None
            os.replace(tmp, stored)
            targets.signed.targets[target_path] = info
            self._publish(targets, self.snapshot(), self.timestamp(), now, sign_targets=True)
        logger.info("published OTA target %s (%d bytes)", target_path, info.length)
        return info

    def root_expires_soon(self, now: dt.datetime | None = None, within: dt.timedelta = dt.timedelta(days=30)) -> bool:
        """Whether root.json expires within `within`: only the offline root keys can renew it (rotate)."""
        return self.root().signed.expires - (now or _now()) < within

    def refresh(self, now: dt.datetime | None = None, force: Sequence[str] = ()) -> list[str]:
        """Re-sign online roles whose signature has less than half its lifetime left (or those in `force`).

        Returns the roles re-signed. A re-signed targets means a new snapshot, and a new snapshot a new
        timestamp, so the chain stays consistent.
        """
        self.require()
        now = now or _now()

        def due(md: Metadata[Any], role: str) -> bool:
            return role in force or md.signed.expires - now < self.lifetimes.of(role) / 2

        with self._locked():
            targets, snapshot, timestamp = self.targets(), self.snapshot(), self.timestamp()
            if due(targets, Targets.type):
                self._publish(targets, snapshot, timestamp, now, sign_targets=True)
                return list(ONLINE_ROLES)
            if due(snapshot, Snapshot.type):
                self._publish(targets, snapshot, timestamp, now, sign_targets=False)
                return [Snapshot.type, Timestamp.type]
            if due(timestamp, Timestamp.type):
                self._sign_timestamp(timestamp, snapshot.signed.version, now)
                return [Timestamp.type]
        return []

    def rotate_root(
        self,
        old_key_dir: Path,
        new_key_dir: Path,
        old_passphrase: bytes | None = None,
        new_passphrase: bytes | None = None,
        now: dt.datetime | None = None,
    ) -> Metadata[Root]:
        """Sign root N+1 with the new root keys (and threshold) and with a threshold of the current ones.

        The online keys of `new_key_dir` replace the current ones too; targets, snapshot and timestamp are
        re-signed with them at once. A client that trusts root N accepts N+1, and from then on only the
        new keys.
        """
        self.require()
        now = now or _now()
        current = self.root()
        old_signers = [
            s
            for s in load_root_signers(old_key_dir, old_passphrase)
            if s.public_key.keyid in current.signed.roles[Root.type].keyids
        ]
        if len(old_signers) < current.signed.roles[Root.type].threshold:
            raise OtaError(
                f"{old_key_dir} holds {len(old_signers)} of the current root keys; rotating needs "
                f"{current.signed.roles[Root.type].threshold}"
            )
        new_set = KeySet.load(new_key_dir)
        new_signers = load_root_signers(new_key_dir, new_passphrase)
        new_root = Metadata[Root].from_bytes(current.to_bytes())
        root = new_root.signed
        root.version += 1
        root.expires = now + self.lifetimes.root
        for role in (Root.type, *ONLINE_ROLES):
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
        for key in new_set.root_keys:
            root.add_key(key, Root.type)
        root.roles[Root.type].threshold = new_set.root_threshold
        for role, key in new_set.online_keys.items():
            root.add_key(key, role)
        new_root.signatures.clear()
        for signer in [*old_signers, *new_signers]:
            new_root.sign(signer, append=True)
        try:
            # The same checks a client makes: the old root vouches for the new one, and it for itself.
            current.verify_delegate(Root.type, new_root)
            new_root.verify_delegate(Root.type, new_root)
        except UnsignedMetadataError as e:
            raise OtaError(f"the new root does not verify: {e}") from None
        with self._locked():
            self._install_online_keys(new_key_dir, new_set)
            self._write_root(new_root)
            self._publish(self.targets(), self.snapshot(), self.timestamp(), now, sign_targets=True)
        logger.info("rotated the OTA root to version %d", root.version)
        return new_root
