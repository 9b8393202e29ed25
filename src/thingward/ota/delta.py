"""Binary deltas between firmware images, each published as a signed TUF target of its own.

A delta `MODEL/NEW.from-OLD.delta` is a bsdiff4 patch that turns the image of version OLD into the image of
version NEW. Its custom fields (under `delta`) name the base (version and SHA-256) and the full target it
rebuilds (path, version, length and SHA-256), so a device can check its running image before it applies the
patch, and the rebuilt image against NEW's own signed hash before it installs it. A delta has no top-level
`model`/`version`: nothing that looks for images (publishing, the device's newest-version pick) mistakes one
for an image.

Deltas are made at publish time for the newest few earlier versions of the model, and skipped when they
would not save much. bsdiff needs about 17 bytes of memory per byte of the old image, so images over a
bound are not diffed at all (devices then download the full image, as they do when no delta exists).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bsdiff4  # type: ignore[import-untyped]  # no stubs; two functions used, results typed here
from packaging.version import InvalidVersion, Version
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.names import validate_name
from thingward.ota.firmware import parse_version, target_path_for
from thingward.ota.repository import OtaRepository
from thingward.registry.audit_log import Actor, record_event

logger = logging.getLogger(__name__)

ALGORITHM = "bsdiff4"
# How many earlier versions of a model get a delta to a new one: devices more than a few releases behind
# take the full image.
DELTA_BASES = 3
# bsdiff's suffix sort holds two 8-byte integers per byte of the old image: 32 MiB images need ~0.6 GiB.
MAX_DELTA_IMAGE_BYTES = 32 * 1024 * 1024
# A delta larger than this share of the full image saves too little to be worth a second code path.
MAX_DELTA_SHARE = 0.75


@dataclass(frozen=True)
class Delta:
    """A signed delta target, as its custom fields describe it."""

    path: str
    model: str
    from_version: str
    from_sha256: str
    target: str
    target_version: str
    target_length: int
    target_sha256: str
    length: int
    sha256: str
    algorithm: str = ALGORITHM

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def share(self) -> float:
        """The delta's size as a share of the full image."""
        return self.length / self.target_length


@dataclass(frozen=True)
class Skipped:
    """A delta that was not made, and why."""

    model: str
    from_version: str
    to_version: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class DeltaReport:
    made: tuple[Delta, ...]
    skipped: tuple[Skipped, ...]

    def to_dict(self) -> dict[str, object]:
        return {"deltas": [d.to_dict() for d in self.made], "deltas_skipped": [s.to_dict() for s in self.skipped]}


def delta_target_path(model: str, from_version: Version, to_version: Version) -> str:
    return f"{model}/{to_version}.from-{from_version}.delta"


def delta_fields(base: TargetFile, target: TargetFile) -> dict[str, object]:
    """The custom fields of a delta from the image `base` to the image `target` (both signed targets)."""
    base_custom, target_custom = _image_fields(base), _image_fields(target)
    return {
        "algorithm": ALGORITHM,
        "model": target_custom["model"],
        "from_version": base_custom["version"],
        "from_sha256": base.hashes["sha256"],
        "target": target.path,
        "target_version": target_custom["version"],
        "target_length": target.length,
        "target_sha256": target.hashes["sha256"],
    }


def delta_of(info: TargetFile) -> Delta | None:
    """The delta a signed target describes, or None for an image (or anything malformed)."""
    custom = info.custom if isinstance(info.custom, dict) else {}
    fields = custom.get("delta")
    if not isinstance(fields, dict) or "sha256" not in info.hashes:
        return None
    try:
        return Delta(
            path=info.path,
            model=str(fields["model"]),
            from_version=str(fields["from_version"]),
            from_sha256=str(fields["from_sha256"]),
            target=str(fields["target"]),
            target_version=str(fields["target_version"]),
            target_length=int(fields["target_length"]),
            target_sha256=str(fields["target_sha256"]),
            length=info.length,
            sha256=info.hashes["sha256"],
            algorithm=str(fields["algorithm"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def list_deltas(repository: OtaRepository, model: str | None = None) -> list[Delta]:
    """The signed deltas, by model, target version and base version."""
    if not repository.exists:
        return []
    found = [d for d in map(delta_of, repository.list_targets()) if d is not None]
    if model is not None:
        found = [d for d in found if d.model == model]
    return sorted(found, key=lambda d: (d.model, _order(d.target_version), _order(d.from_version)))


def _order(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def _image_fields(info: TargetFile) -> dict[str, str]:
    custom = info.custom if isinstance(info.custom, dict) else {}
    model, version = custom.get("model"), custom.get("version")
    if not isinstance(model, str) or not isinstance(version, str) or "sha256" not in info.hashes:
        raise InvalidInputError(f"target {info.path} is not a firmware image (no model, version or sha256)")
    return {"model": model, "version": version}


def _signed_image(repository: OtaRepository, model: str, version: Version) -> TargetFile:
    info = repository.targets().signed.targets.get(target_path_for(model, version))
    if info is None:
        raise NotFoundError(f"{model} {version} is not published: 'thingward ota list --model {model}' shows what is")
    return info


def _stored_image(repository: OtaRepository, info: TargetFile, max_bytes: int) -> bytes:
    """The stored bytes of a signed image, checked against its signed length and hash."""
    if info.length > max_bytes:
        raise InvalidInputError(
            f"{info.path} is {info.length} bytes; deltas are made for images up to {max_bytes} bytes "
            f"(bsdiff needs about 17 times the image size in memory): devices take the full image, "
            "or raise the bound ('thingward ota delta make --max-bytes')"
        )
    model, _, name = info.path.partition("/")
    stored = repository.target_file(model, f"{info.hashes['sha256']}.{name}")
    if stored is None:
        raise NotFoundError(f"the stored file of {info.path} is missing from {repository.targets_dir}")
    data = stored.read_bytes()
    if len(data) != info.length or hashlib.sha256(data).hexdigest() != info.hashes["sha256"]:
        raise ConflictError(f"the stored file of {info.path} does not match its signed hash: republish it")
    return data


def make_patch(old: bytes, new: bytes) -> bytes:
    """A bsdiff4 patch from `old` to `new`, checked by applying it."""
    patch: bytes = bsdiff4.diff(old, new)
    if bsdiff4.patch(old, patch) != new:  # a bug here would make every device fall back: fail loudly instead
        raise ConflictError("bsdiff4 made a delta that does not rebuild the new image; no delta published")
    return patch


def publish_delta(repository: OtaRepository, base: TargetFile, target: TargetFile, patch: bytes) -> Delta:
    """Sign `patch` as the delta target from the signed image `base` to the signed image `target`."""
    fields = delta_fields(base, target)
    path = delta_target_path(
        str(fields["model"]), Version(str(fields["from_version"])), Version(str(fields["target_version"]))
    )
    with tempfile.TemporaryDirectory(dir=repository.path, prefix=".delta-") as work:
        source = Path(work) / "patch"
        source.write_bytes(patch)
        info = repository.add_target(path, source, {"delta": fields})
    made = delta_of(info)
    if made is None:  # the fields were built just above
        raise ConflictError(f"{path} was signed without readable delta fields")
    return made


def _make_one(
    session: Session,
    repository: OtaRepository,
    actor: Actor,
    base: TargetFile,
    target: TargetFile,
    max_bytes: int,
    max_share: float,
) -> Delta | Skipped:
    base_version, target_version = _image_fields(base)["version"], _image_fields(target)["version"]
    model = _image_fields(target)["model"]

    def skip(reason: str) -> Skipped:
        logger.info("no delta %s %s -> %s: %s", model, base_version, target_version, reason)
        return Skipped(model, base_version, target_version, reason)

    path = delta_target_path(model, Version(base_version), Version(target_version))
    if path in repository.targets().signed.targets:
        return skip(f"{path} is published already")
    old = _stored_image(repository, base, max_bytes)
    new = _stored_image(repository, target, max_bytes)
    started = time.perf_counter()
    patch = make_patch(old, new)
    seconds = time.perf_counter() - started
    if len(patch) > max_share * len(new):
        return skip(
            f"the delta is {len(patch)} bytes, {len(patch) / len(new):.0%} of the {len(new)}-byte image "
            f"(worth it only up to {max_share:.0%})"
        )
    made = publish_delta(repository, base, target, patch)
    record_event(
        session,
        actor,
        "ota.delta",
        f"firmware:{made.path}",
        {"from_sha256": made.from_sha256, "target_sha256": made.target_sha256, "length": made.length},
    )
    logger.info("published delta %s: %d bytes for a %d-byte image (%.1f s)", made.path, made.length, len(new), seconds)
    return made


def make_delta(
    session: Session,
    repository: OtaRepository,
    actor: Actor,
    model: str,
    from_version: str,
    to_version: str,
    max_bytes: int = MAX_DELTA_IMAGE_BYTES,
    max_share: float = MAX_DELTA_SHARE,
) -> Delta | Skipped:
    """Make and sign the delta between two published images of `model`; over `max_bytes` is refused."""
    validate_name(model, "model")
    old, new = parse_version(from_version, "--from version"), parse_version(to_version, "--to version")
    if old >= new:
        raise InvalidInputError(f"a delta goes from an older version to a newer one; {old} is not older than {new}")
    repository.require()
    return _make_one(
        session,
        repository,
        actor,
        _signed_image(repository, model, old),
        _signed_image(repository, model, new),
        max_bytes,
        max_share,
    )


def make_deltas(
    session: Session,
    repository: OtaRepository,
    actor: Actor,
    model: str,
    version: str,
    bases: int = DELTA_BASES,
    max_bytes: int = MAX_DELTA_IMAGE_BYTES,
    max_share: float = MAX_DELTA_SHARE,
) -> DeltaReport:
    """Deltas to the published `version` of `model` from its `bases` newest earlier versions (at publish).

    Nothing here refuses the publish: an image too large to diff, or a delta too large to help, is skipped
    with its reason, and devices take the full image.
    """
    repository.require()
    new = parse_version(version)
    target = _signed_image(repository, model, new)
    floor = target.custom.get("min_version") if isinstance(target.custom, dict) else None
    earlier: list[tuple[Version, TargetFile]] = []
    for info in repository.targets().signed.targets.values():
        custom = info.custom if isinstance(info.custom, dict) else {}
        if custom.get("model") != model or not isinstance(custom.get("version"), str):
            continue
        try:
            candidate = Version(custom["version"])
        except InvalidVersion:
            continue
        if candidate < new:
            earlier.append((candidate, info))
    earlier.sort(key=lambda pair: pair[0], reverse=True)
    made: list[Delta] = []
    skipped: list[Skipped] = []
    for candidate, base in earlier[: max(bases, 0)]:
        if floor is not None and candidate < Version(str(floor)):
            skipped.append(Skipped(model, str(candidate), str(new), f"below {new}'s minimum version {floor}"))
            continue
        try:
            result = _make_one(session, repository, actor, base, target, max_bytes, max_share)
        except (InvalidInputError, NotFoundError, ConflictError) as e:
            result = Skipped(model, str(candidate), str(new), str(e))
            logger.warning("no delta %s %s -> %s: %s", model, candidate, new, e)
        if isinstance(result, Delta):
            made.append(result)
        else:
            skipped.append(result)
    return DeltaReport(tuple(made), tuple(skipped))
