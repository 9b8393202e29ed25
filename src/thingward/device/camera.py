"""A simulated security camera: a still scene, a person walking in, and the upload-then-publish of a real one.

Frames are synthesised with NumPy (a fixed scene with a little sensor noise; on motion a person-sized
shape appears somewhere in it) and encoded as JPEG. On motion the camera asks the device listener for an
upload URL (its client certificate is its identity), PUTs the snapshot there, and publishes
`things/NAME/events/motion` with the upload id over MQTT. The first snapshot, without an event, is the
reference the platform compares the next one with.
"""

from __future__ import annotations

import io
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import numpy.typing as npt
from PIL import Image

from thingward.device.client import Device, client_tls_context
from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE
from thingward.errors import ThingwardError

if TYPE_CHECKING:
    from thingward.platform import Platform

logger = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
WIDTH, HEIGHT = 640, 480


class CameraUploadError(ThingwardError):
    """A grant, an upload or the motion event failed: the server's refusal, or why it could not be reached."""


def still_scene(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Frame:
    """A fixed scene: sky, a lawn, a house with a door and a window, some texture."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    scene = np.empty((height, width, 3), dtype=np.float32)
    horizon = int(height * 0.55)
    scene[:horizon] = np.stack([150 + 60 * y[:horizon], 180 + 50 * y[:horizon], 230 + 0 * y[:horizon]], axis=-1)
    scene[horizon:] = [70, 130, 60]
    scene[horizon:] += rng.normal(0, 6, (height - horizon, width, 1)).astype(np.float32)  # grass
    hx0, hx1, hy0 = int(width * 0.55), int(width * 0.9), int(height * 0.3)
    scene[hy0 : horizon + 20, hx0:hx1] = [180, 160, 140]  # the house
    scene[hy0 + 30 : hy0 + 70, hx0 + 20 : hx0 + 70] = [90, 140, 200]  # a window
    scene[horizon - 60 : horizon + 20, hx1 - 70 : hx1 - 35] = [100, 60, 40]  # the door
    return np.clip(scene, 0, 255).astype(np.uint8)


def person_box(x: int, y: int, width: int = WIDTH, height: int = HEIGHT) -> tuple[int, int, int, int]:
    """Where a person standing with their feet at (x, y) is drawn: (x0, y0, x1, y1), clipped to the frame."""
    tall, wide = height // 3, height // 9
    return max(0, x - wide // 2), max(0, y - tall), min(width, x + wide // 2), min(height, y)


def frame_with(scene: Frame, person_at: tuple[int, int] | None, rng: np.random.Generator) -> Frame:
    """The scene as the sensor sees it now: a little noise, and a person if one is there."""
    frame = scene.astype(np.int16)
    if person_at is not None:
        height, width = scene.shape[:2]
        x0, y0, x1, y1 = person_box(*person_at, width, height)
        head = (y1 - y0) // 5
        frame[y0 + head : y1, x0:x1] = [40, 40, 60]  # body
        cx, cy, r = (x0 + x1) // 2, y0 + head // 2, head // 2
        yy, xx = np.ogrid[: scene.shape[0], : scene.shape[1]]
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = [60, 40, 30]  # head: dark hair, or sky and grass hide it
    frame += rng.normal(0, 2, frame.shape).astype(np.int16)
    return np.clip(frame, 0, 255).astype(np.uint8)


def encode(frame: Frame, content_type: str = "image/jpeg", quality: int = 90) -> bytes:
    out = io.BytesIO()
    image = Image.fromarray(frame, "RGB")
    if content_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class SnapshotUploader:
    """The device side of the upload: ask for a URL, PUT the image; both over mutual TLS."""

    def __init__(self, device_api: str, directory: Path, timeout: float = 10.0) -> None:
        self.device_api = device_api.rstrip("/")
        context = client_tls_context(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE)
        self._client = httpx.Client(verify=context, timeout=timeout)

    def grant(self, content_type: str = "image/jpeg", max_bytes: int = 0) -> dict[str, Any]:
        url = f"{self.device_api}/device/v1/uploads"
        try:
            response = self._client.post(url, json={"content_type": content_type, "max_bytes": max_bytes})
        except httpx.HTTPError as e:
            raise CameraUploadError(f"cannot reach the device listener at {url}: {e}") from e
        return _json_or_raise(response, "asking for an upload URL")

    def put(self, grant: dict[str, Any], image: bytes) -> dict[str, Any]:
        try:
            response = self._client.put(grant["url"], content=image, headers={"Content-Type": grant["content_type"]})
        except httpx.HTTPError as e:
            raise CameraUploadError(f"uploading to the device listener failed: {e}") from e
        return _json_or_raise(response, "uploading the snapshot")

    def upload(self, image: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
        """Grant and PUT; returns the stored snapshot (with its `upload_id`)."""
        return self.put(self.grant(content_type), image)

    def close(self) -> None:
        self._client.close()


def _json_or_raise(response: httpx.Response, doing: str) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    if response.status_code >= 400 or not isinstance(body, dict):
        raise CameraUploadError(f"{doing} failed ({response.status_code}): {body.get('error', body)}")
    return body


@dataclass
class MotionStats:
    snapshots: int = 0
    motion_events: int = 0
    errors: int = 0
    last: dict[str, Any] = field(default_factory=dict)


class MotionCamera:
    """A simulated camera that sees a still scene and, on `motion()`, a person in it."""

    def __init__(
        self,
        name: str,
        directory: Path,
        mqtt_host: str,
        mqtt_port: int,
        device_api: str,
        seed: int | None = None,
    ) -> None:
        self.name = name
        self.stats = MotionStats()
        self._random = random.Random(seed)  # noqa: S311 - where a simulated person stands
        self._noise = np.random.default_rng(seed)
        self._scene = still_scene(seed=self._random.randrange(1 << 16))
        self.device = Device.from_dir(directory, name, host=mqtt_host, port=mqtt_port)
        self.uploader = SnapshotUploader(device_api, directory)

    def start(self) -> dict[str, Any]:
        """Connect, and upload the empty scene: the reference for the first motion."""
        self.device.connect()
        stored = self.uploader.upload(encode(frame_with(self._scene, None, self._noise)))
        self.stats.snapshots += 1
        return stored

    def motion(self, person_at: tuple[int, int] | None = None) -> dict[str, Any]:
        """A person appears (at `person_at`, else somewhere on the lawn): upload, then publish the event."""
        height, width = self._scene.shape[:2]
        if person_at is None:
            x = self._random.randrange(width // 10, width * 9 // 10)
            person_at = (x, self._random.randrange(height * 3 // 5, height))
        stored = self.uploader.upload(encode(frame_with(self._scene, person_at, self._noise)))
        self.stats.snapshots += 1
        info = self.device.publish_event("motion", {"upload_id": stored["upload_id"], "zone": "lawn"})
        try:
            info.wait_for_publish(timeout=10)
        except (RuntimeError, ValueError) as e:  # not connected, or paho's queue is full
            raise CameraUploadError(f"the snapshot was uploaded but publishing its motion event failed: {e}") from e
        self.stats.motion_events += 1
        x0, y0, x1, y1 = person_box(*person_at, width, height)
        self.stats.last = {**stored, "person": {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}}
        return self.stats.last

    def clear(self) -> dict[str, Any]:
        """The person left: upload the empty scene again (no event), the reference for the next motion."""
        stored = self.uploader.upload(encode(frame_with(self._scene, None, self._noise)))
        self.stats.snapshots += 1
        return stored

    def close(self) -> None:
        self.uploader.close()
        self.device.close()


def run_motion_camera(
    camera: MotionCamera,
    interval: float,
    count: int,
    stop: threading.Event | None = None,
    on_motion: Callable[[dict[str, Any]], None] | None = None,
) -> MotionStats:
    """Start the camera, then every `interval` s a person appears (and leaves) until `count` events
    (0: until `stop` is set). An upload the server refuses is counted and logged, and the camera goes on."""
    stop = stop or threading.Event()
    camera.start()
    done = 0
    while (count == 0 or done < count) and not stop.wait(interval):
        try:
            last = camera.motion()
            camera.clear()
        except CameraUploadError as e:
            camera.stats.errors += 1
            logger.warning("camera %s: %s", camera.name, e)
            continue
        done += 1
        if on_motion is not None:
            on_motion(last)
    return camera.stats


def simulate_camera(
    platform: Platform,
    name: str,
    api: str,
    device_api: str,
    mqtt_host: str,
    mqtt_port: int,
    interval: float = 5.0,
    count: int = 0,
    stop: threading.Event | None = None,
    on_motion: Callable[[dict[str, Any]], None] | None = None,
    seed: int | None = None,
) -> MotionStats:
    """Register and enroll `name` if it is new (against the running server at `api`), then run it as a
    motion camera (see `run_motion_camera`). What the demo and `thingward camera simulate` call."""
    from thingward.device.simulator import provision_cameras

    directory = provision_cameras(platform, api, [name])[name].directory
    camera = MotionCamera(name, directory, mqtt_host, mqtt_port, device_api, seed=seed)
    try:
        return run_motion_camera(camera, interval, count, stop, on_motion)
    finally:
        camera.close()
