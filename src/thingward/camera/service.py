"""`CameraService`: the one core the device listener, the people's API and the server's message path call.

The path of a motion event: the camera uploads a snapshot (uploads.py), publishes `things/NAME/events/motion`
with its upload id; the broker hands the message to `on_message` on its loop, which only queues it (bounded);
a worker task runs the analysis in a thread (decode, compare with the camera's previous snapshot, mark the
region), stores the motion event and one notification per recipient, and publishes them to the hub.
An event names only the sender's own uploads (the topic's thing is the certificate's), and an upload is
analysed once: a replayed event notifies nobody twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from thingward.broker.base import Authorizer, InboundMessage
from thingward.camera import notify
from thingward.camera.analysis import AnalysisLimits, GrayFrame, Region, annotate, compare, decode_image
from thingward.camera.hub import NotificationHub
from thingward.camera.notify import NotificationView, Preference
from thingward.camera.uploads import (
    CAMERA_DIR,
    UPLOAD_ID,
    IssuedUpload,
    StoredSnapshot,
    UploadLimits,
    UploadRefusedError,
    issue_upload,
    receive_upload,
)
from thingward.errors import NotFoundError, ThingwardError
from thingward.pki.files import SECRET_MODE, write_atomic
from thingward.platform import Platform
from thingward.registry.db import Database
from thingward.registry.models import CameraSnapshot, Certificate, MotionEvent, Thing, User
from thingward.registry.things import get_thing

logger = logging.getLogger(__name__)

MOTION_TOPIC = re.compile(r"things/(?P<thing>[a-z0-9_-]{1,64})/events/motion")
MAX_EVENT_BYTES = 4096
MAX_PENDING = 1000
FRAME_CACHE = 32


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class DeviceRefusedError(ThingwardError):
    """A device whose certificate verified but which may not upload now (revoked, disabled, quarantined)."""


@dataclass(frozen=True)
class CameraSettings:
    uploads: UploadLimits = field(default_factory=UploadLimits)
    analysis: AnalysisLimits = field(default_factory=AnalysisLimits)


@dataclass(frozen=True)
class MotionOutcome:
    event_id: int
    thing: str
    snapshot_id: int
    motion: bool
    changed_fraction: float
    region: Region | None
    note: str
    notifications: tuple[NotificationView, ...] = ()


def motion_upload_id(message: InboundMessage) -> str | None:
    """The upload id a motion event names, if the message is one from its own camera; else None."""
    match = MOTION_TOPIC.fullmatch(message.topic)
    if match is None or match["thing"] != message.thing or len(message.payload) > MAX_EVENT_BYTES:
        return None
    try:
        body = json.loads(message.payload)
    except (UnicodeDecodeError, ValueError):
        return None
    upload_id = body.get("upload_id") if isinstance(body, dict) else None
    return upload_id if isinstance(upload_id, str) and UPLOAD_ID.fullmatch(upload_id) else None


class CameraService:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        settings: CameraSettings | None = None,
        hub: NotificationHub | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.db = db
        self.data_dir = data_dir
        self.settings = settings or CameraSettings()
        self.hub = hub or NotificationHub()
        self.clock = clock
        self._frames: OrderedDict[int, GrayFrame] = OrderedDict()
        self._frames_lock = threading.Lock()
        self._pending: deque[tuple[str, str]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped_events = 0
        self.analysed = 0

    @classmethod
    def for_platform(cls, platform: Platform, hub: NotificationHub | None = None) -> CameraService:
        return cls(platform.db, platform.settings.data_dir, hub=hub)

    # --- devices ---

    def check_device(self, thing: str, serial: str, authorizer: Authorizer) -> None:
        """A verified certificate is not enough: the thing must be enabled, this certificate active in the
        registry, and the policy must let the thing publish its motion events (a quarantined one may not)."""
        with self.db.read() as session:
            row = session.execute(select(Thing).where(Thing.name == thing)).scalar_one_or_none()
            if row is None or row.disabled:
                raise DeviceRefusedError(f"device {thing} is disabled or unknown to this platform")
            status = session.execute(
                select(Certificate.status).where(Certificate.serial == serial, Certificate.thing_id == row.id)
            ).scalar_one_or_none()
        if status != "active":
            raise DeviceRefusedError(f"the certificate of {thing} is revoked or unknown: enroll again")
        if not authorizer.authorize(thing, "publish", f"things/{thing}/events/motion"):
            raise DeviceRefusedError(
                f"{thing} may not publish motion events (quarantined, or no policy allows it): no uploads"
            )

    def grant_upload(self, thing: str, content_type: str, max_bytes: int = 0) -> IssuedUpload:
        with self.db.session() as session:
            return issue_upload(session, thing, content_type, self.clock(), self.settings.uploads, max_bytes)

    def receive_upload(self, thing: str, upload_id: str, token: str, content_type: str, body: bytes) -> StoredSnapshot:
        stored, decoded = receive_upload(
            self.db,
            self.data_dir,
            thing,
            upload_id,
            token,
            content_type,
            body,
            self.clock(),
            self.settings.analysis,
            self.settings.uploads.keep_per_camera,
        )
        self._remember(stored.id, decoded.gray)
        logger.info("snapshot %d of %s stored (%dx%d)", stored.id, thing, stored.width, stored.height)
        return stored

    def _remember(self, snapshot_id: int, gray: GrayFrame) -> None:
        with self._frames_lock:  # uploads and analyses run in worker threads
            self._frames[snapshot_id] = gray
            while len(self._frames) > FRAME_CACHE:
                self._frames.popitem(last=False)

    # --- motion ---

    def _frame(self, snapshot: CameraSnapshot) -> GrayFrame:
        with self._frames_lock:
            cached = self._frames.get(snapshot.id)
        if cached is not None:
            return cached
        data = (self.data_dir / snapshot.path).read_bytes()
        gray = decode_image(data, snapshot.content_type, self.settings.analysis).gray
        self._remember(snapshot.id, gray)
        return gray

    def analyse_motion(self, thing_name: str, upload_id: str) -> MotionOutcome | None:
        """Analyse the snapshot `upload_id` of `thing_name` against the one before it, store the result and
        notify. None when the upload is unknown (to this camera) or was analysed already."""
        with self.db.read() as session:
            thing = get_thing(session, thing_name)
            snapshot = session.execute(
                select(CameraSnapshot).where(CameraSnapshot.thing_id == thing.id, CameraSnapshot.upload_id == upload_id)
            ).scalar_one_or_none()
            if snapshot is None:
                logger.info("motion event of %s names upload %s, not one of its own: ignored", thing_name, upload_id)
                return None
            if _analysed(session, snapshot.id):
                return None
            previous = session.execute(
                select(CameraSnapshot)
                .where(CameraSnapshot.thing_id == thing.id, CameraSnapshot.id < snapshot.id)
                .order_by(CameraSnapshot.id.desc())
                .limit(1)
            ).scalar_one_or_none()
        current = decode_image(
            (self.data_dir / snapshot.path).read_bytes(), snapshot.content_type, self.settings.analysis
        )
        self._remember(snapshot.id, current.gray)
        before = None
        if previous is not None:
            try:
                before = self._frame(previous)
            except (OSError, ThingwardError) as e:
                logger.warning("the previous snapshot %d of %s cannot be read: %s", previous.id, thing_name, e)
        analysis = compare(before, current.gray, self.settings.analysis)
        annotated_path = None
        if analysis.motion:
            relative = Path(CAMERA_DIR) / "annotated" / thing_name / f"{upload_id}.jpg"
            (self.data_dir / relative).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.data_dir / relative, annotate(current.rgb, analysis.region), SECRET_MODE)
            annotated_path = str(relative)
        now = self.clock()
        region = analysis.region
        with self.db.session() as session:
            if _analysed(session, snapshot.id):
                return None
            event = MotionEvent(
                thing_id=thing.id,
                snapshot_id=snapshot.id,
                previous_snapshot_id=previous.id if previous is not None else None,
                motion=analysis.motion,
                changed_fraction=analysis.changed_fraction if previous is not None else None,
                region_x=region.x if region else None,
                region_y=region.y if region else None,
                region_width=region.width if region else None,
                region_height=region.height if region else None,
                note=analysis.note[:256],
                annotated_path=annotated_path,
                analysed_at=now,
            )
            session.add(event)
            session.flush()
            sent = []
            if analysis.motion:
                message = f"Motion at {thing_name}: {analysis.changed_fraction:.1%} of the picture changed"
                sent = [n.id for n in notify.notify(session, thing, event, message, now)]
            event_id = event.id
        with self.db.read() as session:
            views = notify.views_by_id(session, sent) if sent else []
        self.analysed += 1
        return MotionOutcome(
            event_id,
            thing_name,
            snapshot.id,
            analysis.motion,
            analysis.changed_fraction,
            region,
            analysis.note,
            tuple(views),
        )

    def deliver(self, outcome: MotionOutcome) -> int:
        """Publish an outcome's notifications to the live streams of their people."""
        return sum(self.hub.publish(view.user_id, view.to_dict()) for view in outcome.notifications)

    def on_message(self, message: InboundMessage) -> None:
        """The broker's sink for motion events: cheap, never blocks the loop (the worker does the work)."""
        upload_id = motion_upload_id(message)
        if upload_id is None or self._wakeup is None:
            return
        if len(self._pending) >= MAX_PENDING:
            self.dropped_events += 1
            if self.dropped_events % 100 == 1:
                logger.warning("motion analysis queue full (%d); dropped %d so far", MAX_PENDING, self.dropped_events)
            return
        self._pending.append((message.thing, upload_id))
        self._wakeup.set()

    def start(self) -> None:
        """Start the analysis worker on the running loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="thingward-camera")

    async def stop(self) -> None:
        self.hub.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        if self._wakeup is None:
            return
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                thing, upload_id = self._pending.popleft()
                try:
                    outcome = await asyncio.to_thread(self.analyse_motion, thing, upload_id)
                except Exception:
                    logger.exception("analysing upload %s of %s failed", upload_id, thing)
                    continue
                if outcome is not None:
                    delivered = self.deliver(outcome)
                    logger.info(
                        "motion event %d of %s: motion=%s changed=%.4f; %d notification(s), %d live",
                        outcome.event_id,
                        thing,
                        outcome.motion,
                        outcome.changed_fraction,
                        len(outcome.notifications),
                        delivered,
                    )

    # --- people ---

    def _user(self, session: Session, user_id: int) -> User:
        user = session.get(User, user_id)
        if user is None:
            raise NotFoundError("no such user")
        return user

    def recent(self, user_id: int, limit: int = 20, after_id: int = 0) -> list[NotificationView]:
        with self.db.read() as session:
            return notify.recent(session, self._user(session, user_id), limit, after_id)

    def preferences(self, user_id: int) -> list[Preference]:
        with self.db.read() as session:
            return notify.preferences(session, self._user(session, user_id))

    def set_preferences(self, user_id: int, changes: Sequence[Preference]) -> list[Preference]:
        with self.db.session() as session:
            return notify.set_preferences(session, self._user(session, user_id), changes)

    def snapshot_file(self, user_id: int, snapshot_id: int, annotated: bool = False) -> tuple[Path, str]:
        """The image of a snapshot the person may see (the marked copy if asked); NotFoundError otherwise,
        the same for a snapshot of another household's camera as for one that does not exist."""
        from thingward.accounts.sharing import can_view

        missing = NotFoundError(f"no snapshot {snapshot_id}")
        with self.db.read() as session:
            user = self._user(session, user_id)
            snapshot = session.get(CameraSnapshot, snapshot_id)
            if snapshot is None:
                raise missing
            thing = session.get(Thing, snapshot.thing_id)
            if thing is None or not can_view(session, user, thing):
                raise missing
            if not annotated:
                return self.data_dir / snapshot.path, snapshot.content_type
            marked = session.execute(
                select(MotionEvent.annotated_path).where(MotionEvent.snapshot_id == snapshot.id)
            ).scalar_one_or_none()
        if marked is None:
            raise NotFoundError(f"snapshot {snapshot_id} has no marked copy: no motion was found in it")
        return self.data_dir / marked, "image/jpeg"


def _analysed(session: Session, snapshot_id: int) -> bool:
    return session.execute(select(MotionEvent.id).where(MotionEvent.snapshot_id == snapshot_id)).first() is not None


__all__ = [
    "CameraService",
    "CameraSettings",
    "DeviceRefusedError",
    "MotionOutcome",
    "UploadRefusedError",
    "motion_upload_id",
]
