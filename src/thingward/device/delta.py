"""The device's side of delta updates: rebuild the new image from the running one and a signed delta.

    DeltaUnusableError          (a ThingwardError) the device takes the full image instead; the message says why
     └── NoDeltaError           no signed delta from the running version to the offered one (the usual case)

Every step is checked before the next one runs: the delta is a signed target found in verified metadata and
fetched through `tuf.ngclient` (its length and hash checked); its fields must name exactly the target being
installed; the active slot must hash to the base the delta names; the patch's declared output length must be
the target's signed length, and no block of it may decompress past its bound; the rebuilt image must match
the target's own signed length and hash. Only then does it go to a slot, by the same path as a full image.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import bsdiff4.core  # type: ignore[import-untyped]  # no stubs; one function used, its result typed here
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile, Targets
from tuf.ngclient import Updater

from thingward.errors import ThingwardError
from thingward.pki.files import write_atomic

logger = logging.getLogger(__name__)

ALGORITHM = "bsdiff4"
_MAGIC = b"BSDIFF40"
_HEADER = struct.Struct("<8sQQQ")  # magic, compressed control length, compressed diff length, output length
_CONTROL_ENTRY = 24  # three 8-byte integers


class DeltaUnusableError(ThingwardError):
    """No delta could be used; the full image is fetched instead."""


class NoDeltaError(DeltaUnusableError):
    """No signed delta leads from the running image to the offered one."""


@dataclass(frozen=True)
class Rebuilt:
    image: Path  # the rebuilt image, verified against the target's signed length and hash
    delta: str  # the delta target used
    downloaded_bytes: int


def find_delta(targets: Targets, target: TargetFile, running_version: str) -> str | None:
    """The path of a signed delta from `running_version` to `target`, in verified targets metadata."""
    for path, info in targets.targets.items():
        custom = info.custom if isinstance(info.custom, dict) else {}
        fields = custom.get("delta")
        if (
            isinstance(fields, dict)
            and fields.get("algorithm") == ALGORITHM
            and fields.get("target") == target.path
            and fields.get("from_version") == running_version
        ):
            return path
    return None


def _decode_offset(raw: bytes) -> int:
    # bsdiff stores sign and magnitude, not two's complement.
    value = int.from_bytes(raw, "little")
    return -(value & ~(1 << 63)) if value & (1 << 63) else value


def _bounded_bz2(data: bytes, limit: int, block: str) -> bytes:
    decompressor = bz2.BZ2Decompressor()
    try:
        out = decompressor.decompress(data, max_length=limit + 1)
    except OSError as e:
        raise DeltaUnusableError(f"the delta's {block} block is not valid bzip2: {e}") from None
    if len(out) > limit:
        raise DeltaUnusableError(f"the delta's {block} block decompresses past its bound of {limit} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise DeltaUnusableError(f"the delta's {block} block is truncated or has trailing bytes")
    return out


def apply_patch(base: bytes, patch: bytes, output_length: int) -> bytes:
    """Apply a bsdiff4 patch, producing exactly `output_length` bytes (the target's signed length) or refusing.

    bsdiff4's own reader trusts the patch's header and decompresses without bounds; this one checks the
    declared output length first and bounds every block by it, so a patch cannot make the device allocate
    more than a few times the image it is allowed to install.
    """
    if len(patch) < _HEADER.size:
        raise DeltaUnusableError("the delta is shorter than a bsdiff4 header")
    magic, control_size, diff_size, declared = _HEADER.unpack_from(patch)
    if magic != _MAGIC:
        raise DeltaUnusableError("the delta is not a bsdiff4 patch (wrong magic)")
    declared = _decode_offset(struct.pack("<Q", declared))
    if declared != output_length:
        raise DeltaUnusableError(f"the delta builds {declared} bytes; the signed target is {output_length}")
    start = _HEADER.size
    if control_size > len(patch) - start or diff_size > len(patch) - start - control_size:
        raise DeltaUnusableError("the delta's block lengths run past its end")
    control = _bounded_bz2(patch[start : start + control_size], _CONTROL_ENTRY * (output_length + 1024), "control")
    if len(control) % _CONTROL_ENTRY:
        raise DeltaUnusableError("the delta's control block is not whole entries")
    diff = _bounded_bz2(patch[start + control_size : start + control_size + diff_size], output_length, "diff")
    extra = _bounded_bz2(patch[start + control_size + diff_size :], output_length, "extra")
    try:
        rebuilt: bytes = bsdiff4.core.patch(base, output_length, control, diff, extra)
    except (ValueError, MemoryError) as e:
        raise DeltaUnusableError(f"the delta does not apply: {e}") from None
    if len(rebuilt) != output_length:
        raise DeltaUnusableError(f"the delta rebuilt {len(rebuilt)} bytes, not the signed {output_length}")
    return rebuilt


def rebuild_from_delta(
    updater: Updater,
    target: TargetFile,
    running_version: str,
    active_slot: Path,
    work_dir: Path,
    targets: Targets,
) -> Rebuilt:
    """Rebuild `target` from the image in `active_slot` and a signed delta, or raise DeltaUnusableError.

    `updater` has refreshed; `targets` is the targets metadata it verified. Nothing is written to a slot here.
    """
    path = find_delta(targets, target, running_version)
    if path is None:
        raise NoDeltaError(f"no signed delta from {running_version} to {target.path}")
    delta = updater.get_targetinfo(path)
    if delta is None:
        raise DeltaUnusableError(f"{path} is not in the verified targets metadata")
    fields = delta.custom["delta"] if isinstance(delta.custom, dict) else {}
    expected_sha = target.hashes.get("sha256")
    if fields.get("target_sha256") != expected_sha or fields.get("target_length") != target.length:
        raise DeltaUnusableError(f"{path} names another image than the signed {target.path}")
    if delta.length >= target.length:
        raise DeltaUnusableError(f"{path} is no smaller than the full image")
    try:
        base = active_slot.read_bytes()
    except OSError as e:
        raise DeltaUnusableError(f"the running image cannot be read ({e.strerror}): {active_slot}") from None
    if hashlib.sha256(base).hexdigest() != fields.get("from_sha256"):
        raise DeltaUnusableError(
            f"the running image is not the base {path} was made from (its SHA-256 differs from the signed one)"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    patch_file = work_dir / f"{delta.hashes.get('sha256', 'delta')}.delta"
    try:
        # ngclient fetches at most the signed length and checks the signed hashes before it writes the file.
        updater.download_target(delta, str(patch_file))
        patch = patch_file.read_bytes()
    except tuf_errors.RepositoryError as e:
        raise DeltaUnusableError(f"{path} refused by TUF ({type(e).__name__}): {e}") from None
    except (tuf_errors.DownloadError, OSError) as e:
        raise DeltaUnusableError(f"{path} could not be downloaded ({type(e).__name__}): {e}") from None
    finally:
        patch_file.unlink(missing_ok=True)
    rebuilt = apply_patch(base, patch, target.length)
    if hashlib.sha256(rebuilt).hexdigest() != expected_sha:
        raise DeltaUnusableError(f"the image rebuilt from {path} does not match the signed SHA-256 of {target.path}")
    image = work_dir / f"{expected_sha}.rebuilt"
    write_atomic(image, rebuilt)
    with image.open("rb") as f:
        try:
            target.verify_length_and_hashes(f)  # every signed hash, not only the SHA-256 checked above
        except tuf_errors.LengthOrHashMismatchError as e:
            image.unlink()
            raise DeltaUnusableError(f"the image rebuilt from {path} does not match {target.path}: {e}") from None
    logger.info("rebuilt %s from %s (%d bytes downloaded)", target.path, path, delta.length)
    return Rebuilt(image, path, delta.length)
