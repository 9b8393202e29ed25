"""Changes to the OTA root of trust (creating the repository, rotating its root), each recorded in the audit log."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root

from thingward.ota.repository import OtaRepository
from thingward.registry.audit_log import Actor, record_event


def _detail(root: Metadata[Root]) -> dict[str, object]:
    return {
        "root_version": root.signed.version,
        "root_threshold": root.signed.roles[Root.type].threshold,
        "root_keys": sorted(root.signed.roles[Root.type].keyids),
        "online_keys": {role: sorted(root.signed.roles[role].keyids) for role in ("targets", "snapshot", "timestamp")},
    }


def initialise_repository(
    session: Session, actor: Actor, data_dir: Path, key_dir: Path, passphrase: bytes | None
) -> OtaRepository:
    """Create the data dir's repository from a key ceremony's directory."""
    repository = OtaRepository.initialise(OtaRepository.for_data_dir(data_dir).path, key_dir, passphrase)
    record_event(session, actor, "ota.init", "ota:root", _detail(repository.root()))
    return repository


def rotate_root(
    session: Session,
    actor: Actor,
    repository: OtaRepository,
    old_key_dir: Path,
    new_key_dir: Path,
    old_passphrase: bytes | None,
    new_passphrase: bytes | None,
) -> Metadata[Root]:
    root = repository.rotate_root(old_key_dir, new_key_dir, old_passphrase, new_passphrase)
    record_event(session, actor, "ota.root.rotate", "ota:root", _detail(root))
    return root
