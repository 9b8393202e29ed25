"""Motion analysis on real images: generated scenes encoded as JPEG and PNG, decoded with Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from thingward.camera.analysis import AnalysisLimits, ImageRejectedError, Region, annotate, compare, decode_image
from thingward.device.camera import encode, frame_with, person_box, still_scene


def _decoded(frame: np.ndarray, content_type: str = "image/jpeg"):
    return decode_image(encode(frame, content_type), content_type)


def test_the_same_scene_with_sensor_noise_is_no_motion() -> None:
    scene, rng = still_scene(seed=3), np.random.default_rng(1)
    before, after = _decoded(frame_with(scene, None, rng)), _decoded(frame_with(scene, None, rng))
    result = compare(before.gray, after.gray)
    assert result.motion is False
    assert result.changed_fraction < 0.001


def test_a_change_below_the_threshold_is_no_motion() -> None:
    """A small bright spot (a moth on the lens) changes some cells, but not the fraction that is motion."""
    scene = still_scene(seed=3)
    spotted = scene.copy()
    spotted[100:106, 100:106] = 255
    result = compare(_decoded(scene, "image/png").gray, _decoded(spotted, "image/png").gray)
    assert 0 < result.changed_fraction < AnalysisLimits().min_changed_fraction
    assert result.motion is False


def test_a_person_walking_in_is_motion_with_their_bounding_box() -> None:
    scene, rng = still_scene(seed=5), np.random.default_rng(2)
    before = _decoded(frame_with(scene, None, rng))
    after = _decoded(frame_with(scene, (200, 400), rng))
    result = compare(before.gray, after.gray)
    x0, y0, x1, y1 = person_box(200, 400)
    assert result.motion is True
    assert result.region is not None
    # Cells are 2x2 pixels at 640x480 and JPEG smears an edge by a pixel or two: allow 4.
    region = result.region
    assert abs(region.x - x0) <= 4 and abs(region.y - y0) <= 4
    assert abs(region.x + region.width - x1) <= 4 and abs(region.y + region.height - y1) <= 4


def test_a_moved_object_marks_where_it_was_and_where_it_is() -> None:
    scene = np.full((240, 320, 3), 120, dtype=np.uint8)
    first, second = scene.copy(), scene.copy()
    first[40:80, 30:70] = 20  # a dark box at (30, 40) 40x40 ...
    second[150:190, 200:240] = 20  # ... moved to (200, 150)
    result = compare(_decoded(first, "image/png").gray, _decoded(second, "image/png").gray)
    assert result.motion is True
    assert result.region == Region(30, 40, 240 - 30, 190 - 40)
    assert result.changed_fraction == pytest.approx(2 * 40 * 40 / (320 * 240), rel=0.05)


def test_the_first_snapshot_and_a_new_resolution_are_references_not_motion() -> None:
    frame = _decoded(still_scene(320, 240)).gray
    assert compare(None, frame).motion is False
    changed = compare(_decoded(still_scene(640, 480)).gray, frame)
    assert changed.motion is False and "resolution changed" in changed.note


def test_the_marked_copy_outlines_the_region_in_red() -> None:
    image = Image.new("RGB", (200, 100), (120, 120, 120))
    marked = Image.open(io.BytesIO(annotate(image, Region(50, 20, 60, 40)))).convert("RGB")
    red, green, _ = marked.getpixel((50, 40))  # on the left edge
    assert red > 180 and green < 90
    assert marked.getpixel((80, 40))[0] < 150  # inside stays as it was


def test_a_truncated_jpeg_is_refused_as_corrupt() -> None:
    data = encode(still_scene(320, 240))
    with pytest.raises(ImageRejectedError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], "image/jpeg")


def test_garbage_and_the_wrong_declared_type_are_refused() -> None:
    with pytest.raises(ImageRejectedError, match="not a JPEG image"):
        decode_image(b"\x00" * 1000, "image/jpeg")
    with pytest.raises(ImageRejectedError, match="not a JPEG image"):
        decode_image(encode(still_scene(32, 32), "image/png"), "image/jpeg")
    with pytest.raises(ImageRejectedError, match="content type 'image/gif' is not accepted"):
        decode_image(b"GIF89a", "image/gif")
    with pytest.raises(ImageRejectedError, match="empty"):
        decode_image(b"", "image/png")


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    """A small PNG that would decompress to 64 megapixels is refused before it is decompressed."""
    out = io.BytesIO()
    Image.new("1", (8000, 8000)).save(out, format="PNG")
    bomb = out.getvalue()
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejectedError, match="decompression bomb"):
        decode_image(bomb, "image/png")


def test_an_image_over_the_side_limit_is_refused() -> None:
    out = io.BytesIO()
    Image.new("L", (9000, 2)).save(out, format="PNG")
    with pytest.raises(ImageRejectedError, match="each side must be 1 to 8192"):
        decode_image(out.getvalue(), "image/png")
