"""Publishing firmware: an image becomes a signed TUF target and a registry row, in that order and together.

A version must be greater than every published version of its model (PEP 440 ordering), so the newest
target is always the one devices should run, and a device can refuse anything older than what it runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version
from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import Targets

from thingward.errors import ConflictError, InvalidInputError
from thingward.names import validate_name
from thingward.ota.repository import OtaRepository
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import FirmwareImage

MAX_IMAGE_BYTES = 1024 * 1024 * 1024


def parse_version(value: str, what: str = "version") -> Version:
    """A firmware version as PEP 440 orders it; local versions (`+abc`) are refused (they do not order)."""
    try:
        version = Version(value)
    except InvalidVersion:
        raise InvalidInputError(f"{what} {value!r} is not a version such as 1.4.2 (PEP 440)") from None
    if version.local is not None:
        raise InvalidInputError(f"{what} {value!r} carries a local part ('+...'), which has no order: drop it")
    return version


@dataclass(frozen=True)
class Image:
    model: str
    version: str
    min_version: str | None
    target_path: str
    sha256: str
    length: int
    published_at: dt.datetime
    published_by: str

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "version": self.version,
            "min_version": self.min_version,
            "target_path": self.target_path,
            "sha256": self.sha256,
            "length": self.length,
            "published_at": self.published_at.isoformat(),
            "published_by": self.published_by,
        }


def _image(row: FirmwareImage) -> Image:
    return Image(
        row.model,
        row.version,
        row.min_version,
        row.target_path,
        row.sha256,
        row.length,
        row.published_at,
        row.published_by,
    )


def target_path_for(model: str, version: Version) -> str:
    return f"{model}/{version}.img"


def list_images(session: Session, model: str | None = None) -> list[Image]:
    """Published images, by model and then version (oldest first)."""
    query = select(FirmwareImage)
    if model is not None:
        query = query.where(FirmwareImage.model == model)
    rows = session.execute(query).scalars().all()
    return sorted((_image(r) for r in rows), key=lambda i: (i.model, Version(i.version)))


def publish_image(
    session: Session,
    repository: OtaRepository,
    actor: Actor,
    image: Path,
    model: str,
    version: str,
    min_version: str | None = None,
) -> Image:
    """Sign `image` as the new newest firmware of `model`; refused unless `version` beats every published one."""
    validate_name(model, "model")
    new = parse_version(version)
    floor = parse_version(min_version, "minimum version") if min_version else None
    if floor is not None and floor >= new:
        raise InvalidInputError(f"minimum version {floor} must be lower than the version published ({new})")
    if not image.is_file():
        raise InvalidInputError(f"{image} is not a file")
    size = image.stat().st_size
    if not 0 < size <= MAX_IMAGE_BYTES:
        raise InvalidInputError(f"{image} holds {size} bytes; an image holds 1 byte to {MAX_IMAGE_BYTES} bytes")
    repository.require()
    newest_published = max((Version(i.version) for i in list_images(session, model)), default=None)

    def only_newer(targets: Targets) -> None:
        # Judged against the signed targets (what devices see) under the repository lock, and the registry.
        known = [newest_published] if newest_published is not None else []
        for target in targets.targets.values():
            fields = target.custom if isinstance(target.custom, dict) else {}
            if fields.get("model") == model and isinstance(fields.get("version"), str):
                known.append(Version(fields["version"]))
        if known and max(known) >= new:
            raise ConflictError(
                f"{model} {new} is not newer than the newest published version, {max(known)}: "
                "publish a greater version (devices refuse to go back)"
            )

    path = target_path_for(model, new)
    custom: dict[str, object] = {"model": model, "version": str(new)}
    if floor is not None:
        custom["min_version"] = str(floor)
    info = repository.add_target(path, image, custom, check=only_newer)
    row = FirmwareImage(
        model=model,
        version=str(new),
        min_version=str(floor) if floor else None,
        target_path=path,
        sha256=info.hashes["sha256"],
        length=info.length,
        published_at=dt.datetime.now(dt.UTC),
        published_by=actor.name,
    )
    session.add(row)
    record_event(
        session,
        actor,
        "ota.publish",
        f"firmware:{path}",
        {"sha256": row.sha256, "length": row.length, "min_version": row.min_version},
    )
    return _image(row)
