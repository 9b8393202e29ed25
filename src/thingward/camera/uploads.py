"""Upload URLs for camera snapshots: short-lived, single use, bound to one camera, one type and a size.

A camera asks for a grant over the device listener (its client certificate says who it is) and gets an
upload id and a secret token (the URL's `token`, stored only as SHA-256). The PUT must come from the same
camera, before the grant expires, with the declared content type and at most `max_bytes`; the grant is
claimed by a conditional UPDATE, so two racing PUTs cannot both store. A body that is not a usable image
is refused and nothing is stored. Files live under `DATA_DIR/camera/`, owner-only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from thingward.camera.analysis import CONTENT_TYPES, AnalysisLimits, DecodedImage, decode_image
from thingward.errors import ThingwardError
from thingward.pki.files import SECRET_MODE, write_atomic
from thingward.registry.db import Database
from thingward.registry.models import CameraSnapshot, CameraUploadGrant, MotionEvent, Notification, Thing
from thingward.registry.things import get_thing

CAMERA_DIR = "camera"
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}


@dataclass(frozen=True)
class UploadLimits:
    ttl_seconds: int = 60
    # The largest snapshot a camera may upload (a 4K JPEG is 1-3 MiB); a grant may ask for less.
    max_bytes: int = 4 * 1024 * 1024
    # Upload URLs one camera may hold unused at once (a camera asks for one per snapshot).
    max_open_grants: int = 10
    # Snapshots kept per camera; older ones (their files, analyses and notifications) are deleted.
    keep_per_camera: int = 500


class UploadRefusedError(ThingwardError):
    """An upload or a grant request that cannot be accepted; `status` is the HTTP status a door answers."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class IssuedUpload:
    upload_id: str
    token: str
    thing: str
    content_type: str
    max_bytes: int
    expires_at: dt.datetime


@dataclass(frozen=True)
class StoredSnapshot:
    id: int
    thing: str
    upload_id: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot_id": self.id,
            "thing": self.thing,
            "upload_id": self.upload_id,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def camera_dir(data_dir: Path) -> Path:
    return data_dir / CAMERA_DIR


def issue_upload(
    session: Session, thing_name: str, content_type: str, now: dt.datetime, limits: UploadLimits, max_bytes: int = 0
) -> IssuedUpload:
    """A grant for one snapshot of `thing_name`. `max_bytes` 0 means the limit."""
    if content_type not in CONTENT_TYPES:
        raise UploadRefusedError(
            f"content_type {content_type!r} is not accepted: ask for {' or '.join(CONTENT_TYPES)}", 400
        )
    if max_bytes < 0 or max_bytes > limits.max_bytes:
        raise UploadRefusedError(f"max_bytes must be 1 to {limits.max_bytes} (or 0 for the limit)", 400)
    thing = get_thing(session, thing_name)
    # Spent and expired grants are of no more use: each request clears its camera's.
    session.execute(
        delete(CameraUploadGrant).where(
            CameraUploadGrant.thing_id == thing.id,
            or_(CameraUploadGrant.used_at.is_not(None), CameraUploadGrant.expires_at <= now),
        )
    )
    open_grants = session.execute(select(func.count()).where(CameraUploadGrant.thing_id == thing.id)).scalar_one()
    if open_grants >= limits.max_open_grants:
        raise UploadRefusedError(
            f"{thing_name} holds {open_grants} unused upload URLs already: use them, or wait until they expire", 429
        )
    upload_id, token = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
    expires_at = now + dt.timedelta(seconds=limits.ttl_seconds)
    grant = CameraUploadGrant(
        upload_id=upload_id,
        thing_id=thing.id,
        token_sha256=_digest(token),
        content_type=content_type,
        max_bytes=max_bytes or limits.max_bytes,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(grant)
    session.flush()
    return IssuedUpload(upload_id, token, thing_name, content_type, grant.max_bytes, expires_at)


@dataclass(frozen=True)
class _Grant:
    id: int
    upload_id: str
    thing_id: int
    content_type: str
    max_bytes: int


def check_upload(
    session: Session,
    thing_name: str,
    upload_id: str,
    token: str,
    content_type: str,
    content_length: int | None,
    now: dt.datetime,
) -> _Grant:
    """Everything that can be decided before the body is read; raises UploadRefusedError."""
    row = None
    if UPLOAD_ID.fullmatch(upload_id):
        query = select(CameraUploadGrant).where(CameraUploadGrant.upload_id == upload_id)
        row = session.execute(query).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.token_sha256, _digest(token)):
        raise UploadRefusedError("no such upload URL (unknown upload id or wrong token): ask for a new one", 404)
    thing = session.execute(select(Thing).where(Thing.name == thing_name)).scalar_one_or_none()
    if thing is None or row.thing_id != thing.id:
        raise UploadRefusedError("this upload URL was issued to another device: ask for one of your own", 403)
    if row.used_at is not None:
        raise UploadRefusedError("this upload URL was used already (single use): ask for a new one", 409)
    if row.expires_at <= now:
        raise UploadRefusedError(f"this upload URL expired at {row.expires_at.isoformat()}: ask for a new one", 410)
    if content_type != row.content_type:
        raise UploadRefusedError(
            f"Content-Type is {content_type or 'missing'} but this upload URL is for {row.content_type}", 415
        )
    if content_length is None:
        raise UploadRefusedError("a Content-Length header is required", 411)
    if content_length > row.max_bytes:
        raise UploadRefusedError(
            f"the upload of {content_length} bytes is over this URL's limit of {row.max_bytes} bytes", 413
        )
    return _Grant(row.id, row.upload_id, row.thing_id, row.content_type, row.max_bytes)


def _expire_old_snapshots(session: Session, thing_id: int, keep: int) -> list[str]:
    """Delete the camera's snapshots beyond the newest `keep` (their analyses and notifications go with
    them); returns the files to remove once the transaction committed."""
    old = (
        session.execute(
            select(CameraSnapshot)
            .where(CameraSnapshot.thing_id == thing_id)
            .order_by(CameraSnapshot.id.desc())
            .offset(keep)
        )
        .scalars()
        .all()
    )
    if not old:
        return []
    ids = [snapshot.id for snapshot in old]
    marked = session.execute(
        select(MotionEvent.annotated_path).where(
            MotionEvent.snapshot_id.in_(ids), MotionEvent.annotated_path.is_not(None)
        )
    ).scalars()
    files = [snapshot.path for snapshot in old] + [path for path in marked if path]
    # Explicit, not left to ON DELETE CASCADE: the same on every database whatever its foreign-key setting.
    events = select(MotionEvent.id).where(MotionEvent.snapshot_id.in_(ids))
    session.execute(delete(Notification).where(Notification.motion_event_id.in_(events)))
    session.execute(delete(MotionEvent).where(MotionEvent.snapshot_id.in_(ids)))
    session.execute(
        update(MotionEvent).where(MotionEvent.previous_snapshot_id.in_(ids)).values(previous_snapshot_id=None)
    )
    session.execute(delete(CameraSnapshot).where(CameraSnapshot.id.in_(ids)))
    return files


def receive_upload(
    db: Database,
    data_dir: Path,
    thing_name: str,
    upload_id: str,
    token: str,
    content_type: str,
    body: bytes,
    now: dt.datetime,
    limits: AnalysisLimits | None = None,
    keep_per_camera: int = UploadLimits.keep_per_camera,
) -> tuple[StoredSnapshot, DecodedImage]:
    """Check, decode and store one uploaded snapshot; on any refusal nothing is stored. The camera's
    snapshots beyond the newest `keep_per_camera` are deleted."""
    with db.read() as session:
        grant = check_upload(session, thing_name, upload_id, token, content_type, len(body), now)
    decoded = decode_image(body, content_type, limits)  # ImageRejectedError: nothing stored, grant unspent
    sha256 = hashlib.sha256(body).hexdigest()
    relative = Path(CAMERA_DIR) / "snapshots" / thing_name / f"{upload_id}.{_EXTENSIONS[content_type]}"
    target = data_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with db.session() as session:
        claimed = session.execute(
            update(CameraUploadGrant)
            .where(
                CameraUploadGrant.id == grant.id,
                CameraUploadGrant.used_at.is_(None),
                CameraUploadGrant.expires_at > now,
            )
            .values(used_at=now)
        )
        if not getattr(claimed, "rowcount", 0):
            raise UploadRefusedError("this upload URL was used already (single use): ask for a new one", 409)
        snapshot = CameraSnapshot(
            thing_id=grant.thing_id,
            upload_id=upload_id,
            content_type=content_type,
            width=decoded.width,
            height=decoded.height,
            size_bytes=len(body),
            sha256=sha256,
            path=str(relative),
            received_at=now,
        )
        session.add(snapshot)
        session.flush()
        # Written inside the transaction: if it fails, the grant is not spent and no row points at nothing.
        write_atomic(target, body, SECRET_MODE)
        stored = StoredSnapshot(
            snapshot.id, thing_name, upload_id, content_type, decoded.width, decoded.height, len(body), sha256
        )
        expired = _expire_old_snapshots(session, grant.thing_id, keep_per_camera)
    for relative_path in expired:
        (data_dir / relative_path).unlink(missing_ok=True)
    return stored, decoded
