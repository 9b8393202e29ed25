"""Delta images: signed at publish, rebuilt by the device over a real HTTPS API, full image on any failure.

Bytes are counted at the HTTP server (an ASGI wrapper around the real app under uvicorn with TLS), so "far
fewer bytes" is what went over the wire, not what the client says it read.
"""

from __future__ import annotations

import asyncio
import bz2
import hashlib
import json
import random
import secrets
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bsdiff4
import bsdiff4.core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from thingward.app.api import create_app
from thingward.app.https import https_server
from thingward.cli.main import app as cli
from thingward.device.delta import DeltaUnusableError, apply_patch
from thingward.device.update import FirmwareUpdater, UpdateRefusedError
from thingward.errors import InvalidInputError
from thingward.ota import delta, firmware
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform
from thingward.registry.audit_log import Actor, list_events

ACTOR = Actor("test", "pytest")
runner = CliRunner()
SIZE = 200_000


class ByteCounter:
    """ASGI middleware: response body bytes sent, per request path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def counting(message: Any) -> None:
            if message["type"] == "http.response.body":
                self.sent[path] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)

    def targets(self) -> dict[str, int]:
        return {p.rsplit("/", 1)[1]: n for p, n in self.sent.items() if p.startswith("/ota/targets/")}


class CountedApi:
    """The platform's API under uvicorn with TLS on a free loopback port, counting what it sends."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.counter = ByteCounter(create_app(platform))
        self.server = https_server(
            self.counter,  # type: ignore[arg-type]
            "127.0.0.1",
            0,
            platform.server_certificate_path,
            platform.server_key_path,
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"


@pytest.fixture
def counted(platform: Platform) -> Iterator[CountedApi]:
    served = CountedApi(platform)
    served.thread.start()
    try:
        for _ in range(500):
            if served.server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("API server did not start within 5 s")
        yield served
    finally:
        served.server.should_exit = True
        served.thread.join(timeout=10)


def _changed(base: bytes, seed: int) -> bytes:
    """The next release: a region rewritten and a few bytes inserted, the rest as it was."""
    at = 20_000 + seed * 10_000
    return base[:at] + secrets.token_bytes(1_000) + base[at + 1_000 : 150_000] + b"added" * 50 + base[150_000:]


def _publish(platform: Platform, repo: OtaRepository, tmp_path: Path, version: str, data: bytes, bases: int = 3):
    source = tmp_path / f"fw-{version}.img"
    source.write_bytes(data)
    with platform.db.session() as session:
        firmware.publish_image(session, repo, ACTOR, source, "cam", version)
    with platform.db.session() as session:
        return delta.make_deltas(session, repo, ACTOR, "cam", version, bases)


def _device(counted: CountedApi, repo: OtaRepository, tmp_path: Path, running: bytes, version: str = "1.0.0"):
    return FirmwareUpdater.provision(
        tmp_path / "device",
        (repo.metadata_dir / "1.root.json").read_bytes(),
        running,
        version,
        counted.url,
        counted.platform.ca_certificate_path,
        "cam",
    )


def _stored(repo: OtaRepository, path: str) -> Path:
    info = repo.targets().signed.targets[path]
    model, _, name = path.partition("/")
    return repo.targets_dir / model / f"{info.hashes['sha256']}.{name}"


def _installs_full_image(device: FirmwareUpdater, counted: CountedApi, image: bytes, reason: str) -> None:
    outcome = device.update()
    assert (outcome.status, outcome.version, outcome.delta) == ("installed", "1.1.0", "")
    assert reason in outcome.delta_fallback
    assert outcome.downloaded_bytes == len(image)
    assert device.slots.slot_file("b").read_bytes() == image
    assert sum(n for name, n in counted.counter.targets().items() if name.endswith(".img")) == len(image)
    assert not list((device.device_dir / "download").iterdir())
    assert device.boot(lambda slot, version: True).status == "confirmed"
    assert device.running_version == "1.1.0"


def test_publish_signs_deltas_from_the_newest_earlier_versions_and_lists_them(platform, repo, tmp_path) -> None:
    data = ["--data-dir", str(platform.settings.data_dir), "--json"]
    images = [secrets.token_bytes(SIZE)]
    for seed in range(4):
        images.append(_changed(images[-1], seed))
    for i, image in enumerate(images):
        source = tmp_path / f"{i}.img"
        source.write_bytes(image)
        done = runner.invoke(cli, ["ota", "publish", str(source), "--model", "cam", "--version", f"1.{i}.0", *data])
        assert done.exit_code == 0, done.stderr
    published = json.loads(done.stdout)
    # Bounded: the three newest earlier versions get a delta to 1.4.0, 1.0.0 does not.
    assert [d["from_version"] for d in published["deltas"]] == ["1.3.0", "1.2.0", "1.1.0"]
    signed = repo.targets()
    repo.root().verify_delegate("targets", signed)
    info = signed.signed.targets["cam/1.4.0.from-1.3.0.delta"]
    assert info.custom == {
        "delta": {
            "algorithm": "bsdiff4",
            "model": "cam",
            "from_version": "1.3.0",
            "from_sha256": hashlib.sha256(images[3]).hexdigest(),
            "target": "cam/1.4.0.img",
            "target_version": "1.4.0",
            "target_length": len(images[4]),
            "target_sha256": hashlib.sha256(images[4]).hexdigest(),
        }
    }
    assert info.length < len(images[4]) / 20
    patch = _stored(repo, info.path).read_bytes()
    assert apply_patch(images[3], patch, len(images[4])) == images[4]
    listed = json.loads(runner.invoke(cli, ["ota", "list", *data]).stdout)
    assert len(listed["images"]) == 5
    assert [(d["from_version"], d["target_version"]) for d in listed["deltas"]][-3:] == [
        ("1.1.0", "1.4.0"),
        ("1.2.0", "1.4.0"),
        ("1.3.0", "1.4.0"),
    ]
    assert len(listed["deltas"]) == 1 + 2 + 3 + 3
    human = runner.invoke(cli, ["ota", "list", "--data-dir", str(platform.settings.data_dir)])
    assert "deltas" in human.stdout and "1.4.0.from-1.3.0" in human.stdout
    with platform.db.read() as session:
        assert sum(e.action == "ota.delta" for e in list_events(session)) == 9
    # The newest image is still what publishing and devices see as newest: deltas are not images.
    again = runner.invoke(cli, ["ota", "publish", str(source), "--model", "cam", "--version", "1.3.5", *data])
    assert again.exit_code == 1 and r"newest published version, 1.4.0" in again.stderr


def test_delta_that_saves_too_little_is_skipped(platform, repo, tmp_path) -> None:
    _publish(platform, repo, tmp_path, "1.0.0", secrets.token_bytes(SIZE))
    report = _publish(platform, repo, tmp_path, "2.0.0", secrets.token_bytes(SIZE))  # a whole new image
    assert report.made == ()
    assert "worth it only up to 75%" in report.skipped[0].reason
    assert delta.list_deltas(repo) == []


def test_device_goes_a_to_b_by_delta_downloading_far_fewer_bytes(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a)
    (made,) = _publish(platform, repo, tmp_path, "1.1.0", b).made
    device = _device(counted, repo, tmp_path, a)
    left_over = device.device_dir / "download" / f"{hashlib.sha256(b).hexdigest()}.part"
    left_over.parent.mkdir()
    left_over.write_bytes(b[:1000])  # an earlier full download that broke off; the delta makes it moot
    outcome = device.update()
    assert (outcome.status, outcome.version, outcome.delta, outcome.delta_fallback) == (
        "installed",
        "1.1.0",
        "cam/1.1.0.from-1.0.0.delta",
        "",
    )
    # On the wire: the delta, and no byte of the full image.
    sent = counted.counter.targets()
    assert sent == {f"{made.sha256}.1.1.0.from-1.0.0.delta": made.length}
    assert outcome.downloaded_bytes == made.length < len(b) / 20
    assert device.slots.slot_file("b").read_bytes() == b  # byte-identical to the full image
    assert device.boot(lambda slot, version: True).status == "confirmed"
    assert device.running_version == "1.1.0" and device.update().status == "up_to_date"
    assert not list((device.device_dir / "download").iterdir())
    # The next release is rebuilt from the image now running, in slot B, and goes to slot A.
    c = _changed(b, 2)
    _publish(platform, repo, tmp_path, "1.2.0", c)
    outcome = device.update()
    assert (outcome.status, outcome.delta) == ("installed", "cam/1.2.0.from-1.1.0.delta")
    assert device.slots.slot_file("a").read_bytes() == c
    assert device.boot(lambda slot, version: True).status == "confirmed" and device.running_version == "1.2.0"
    assert sum(n for name, n in counted.counter.targets().items() if name.endswith(".img")) == 0


def test_tampered_delta_on_the_server_refused_by_tuf_and_full_image_installed(
    platform, repo, counted, tmp_path
) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a)
    (made,) = _publish(platform, repo, tmp_path, "1.1.0", b).made
    stored = _stored(repo, made.path)
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))
    device = _device(counted, repo, tmp_path, a)
    _installs_full_image(device, counted, b, "refused by TUF (LengthOrHashMismatchError)")


def test_device_whose_active_slot_is_not_the_named_base_takes_the_full_image(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a)
    _publish(platform, repo, tmp_path, "1.1.0", b)
    modified = bytearray(a)
    modified[100] ^= 0xFF  # a device that says 1.0.0 but runs other bytes
    device = _device(counted, repo, tmp_path, bytes(modified))
    _installs_full_image(device, counted, b, "the running image is not the base")
    assert not any(name.endswith(".delta") for name in counted.counter.targets())  # checked before fetching


def test_signed_delta_that_rebuilds_the_wrong_bytes_caught_by_the_target_hash(
    platform, repo, counted, tmp_path
) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b, bases=0)
    # A delta signed for 1.0.0 -> 1.1.0 that in fact builds another image of the same length.
    other = _changed(a, 3)
    assert len(other) == len(b) and other != b
    targets = repo.targets().signed.targets
    forged = delta.publish_delta(repo, targets["cam/1.0.0.img"], targets["cam/1.1.0.img"], delta.make_patch(a, other))
    assert forged.target_sha256 == hashlib.sha256(b).hexdigest()
    device = _device(counted, repo, tmp_path, a)
    _installs_full_image(device, counted, b, "does not match the signed SHA-256 of cam/1.1.0.img")


def test_signed_but_corrupt_delta_falls_back_to_the_full_image(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b, bases=0)
    patch = bytearray(delta.make_patch(a, b))
    patch[40:48] = b"\x00" * 8  # inside the compressed control block
    targets = repo.targets().signed.targets
    delta.publish_delta(repo, targets["cam/1.0.0.img"], targets["cam/1.1.0.img"], bytes(patch))
    device = _device(counted, repo, tmp_path, a)
    _installs_full_image(device, counted, b, "not valid bzip2")


def test_delta_whose_fields_name_another_image_is_not_used(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b, bases=0)
    targets = repo.targets().signed.targets
    fields = delta.delta_fields(targets["cam/1.0.0.img"], targets["cam/1.1.0.img"])
    other = _changed(a, 3)
    fields["target_sha256"] = hashlib.sha256(other).hexdigest()  # a delta for another build of 1.1.0
    patch = tmp_path / "patch"
    patch.write_bytes(delta.make_patch(a, other))
    repo.add_target("cam/1.1.0.from-1.0.0.delta", patch, {"delta": fields})
    device = _device(counted, repo, tmp_path, a)
    _installs_full_image(device, counted, b, "names another image than the signed cam/1.1.0.img")
    assert not any(name.endswith(".delta") for name in counted.counter.targets())


def test_no_delta_for_the_running_version_takes_the_full_image(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b)
    assert len(delta.list_deltas(repo)) == 1  # from 1.0.0 only
    device = _device(counted, repo, tmp_path, a, version="0.9.0")  # a factory version never published
    _installs_full_image(device, counted, b, "no signed delta from 0.9.0 to cam/1.1.0.img")


def test_a_signed_delta_to_an_older_version_cannot_take_a_device_back(platform, repo, counted, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b, bases=0)
    targets = repo.targets().signed.targets
    # Signed with the targets key: a delta from 1.1.0 back to 1.0.0 (a vulnerable one, say).
    back = delta.publish_delta(repo, targets["cam/1.1.0.img"], targets["cam/1.0.0.img"], delta.make_patch(b, a))
    assert back.path == "cam/1.0.0.from-1.1.0.delta"
    device = _device(counted, repo, tmp_path, b, version="1.1.0")
    assert device.update().status == "up_to_date"
    with pytest.raises(UpdateRefusedError, match=r"version 1\.0\.0, older than the running 1\.1\.0"):
        device.update(version="1.0.0")
    assert device.running_version == "1.1.0" and device.slots.load().trial is None
    assert counted.counter.targets() == {}


def test_image_over_the_size_limit_refused_with_a_clear_error(platform, repo, tmp_path) -> None:
    a = secrets.token_bytes(SIZE)
    b = _changed(a, 0)
    _publish(platform, repo, tmp_path, "1.0.0", a, bases=0)
    _publish(platform, repo, tmp_path, "1.1.0", b, bases=0)
    with platform.db.session() as session, pytest.raises(InvalidInputError, match="deltas are made for images up"):
        delta.make_delta(session, repo, ACTOR, "cam", "1.0.0", "1.1.0", max_bytes=100_000)
    data = ["--data-dir", str(platform.settings.data_dir), "--json"]
    refused = runner.invoke(
        cli,
        ["ota", "delta", "make", "--model", "cam", "--from", "1.0.0", "--to", "1.1.0", "--max-bytes", "1000", *data],
    )
    assert refused.exit_code == 1
    message = json.loads(refused.stdout)["error"]
    assert message.startswith(f"cam/1.0.0.img is {SIZE} bytes; deltas are made for images up to 1000 bytes")
    assert "--max-bytes" in message
    assert delta.list_deltas(repo) == []
    # At publish, the same limit skips the delta (with its reason) and the image is still published.
    with platform.db.session() as session:
        report = delta.make_deltas(session, repo, ACTOR, "cam", "1.1.0", max_bytes=1000)
    assert report.made == () and "up to 1000 bytes" in report.skipped[0].reason
    made = runner.invoke(cli, ["ota", "delta", "make", "--model", "cam", "--from", "1.0.0", "--to", "1.1.0", *data])
    assert made.exit_code == 0, made.stderr
    assert json.loads(made.stdout)["made"] is True and len(delta.list_deltas(repo)) == 1
    wrong_way = runner.invoke(
        cli, ["ota", "delta", "make", "--model", "cam", "--from", "1.1.0", "--to", "1.0.0", *data]
    )
    assert wrong_way.exit_code == 1 and "1.1.0 is not older than 1.0.0" in json.loads(wrong_way.stdout)["error"]


def _patch(header: tuple[int, int, int], blocks: bytes) -> bytes:
    return struct.pack("<8sQQQ", b"BSDIFF40", *header) + blocks


def test_patch_declaring_another_output_length_refused_before_it_runs() -> None:
    a = secrets.token_bytes(10_000)
    b = a[:5_000] + secrets.token_bytes(100) + a[5_000:] + b"x" * 1_900
    patch = delta.make_patch(a, b)
    assert apply_patch(a, patch, len(b)) == b
    with pytest.raises(DeltaUnusableError, match="builds 12000 bytes; the signed target is 11999"):
        apply_patch(a, patch, len(b) - 1)
    with pytest.raises(DeltaUnusableError, match="wrong magic"):
        apply_patch(a, b"BSDIFF41" + patch[8:], len(b))
    with pytest.raises(DeltaUnusableError, match="run past its end"):
        apply_patch(a, patch[:40], len(b))


def test_patch_whose_block_decompresses_past_the_signed_length_refused() -> None:
    # A bzip2 bomb in the diff block: a few dozen bytes that expand to 5 MB.
    bomb = bz2.compress(b"\x00" * 5_000_000)
    control = bz2.compress(struct.pack("<QQQ", 1000, 0, 0))
    patch = _patch((len(control), len(bomb), 1000), control + bomb + bz2.compress(b""))
    with pytest.raises(DeltaUnusableError, match="diff block decompresses past its bound of 1000 bytes"):
        apply_patch(b"x" * 1000, patch, 1000)


_BASE = random.Random(7).randbytes(20_000)
_NEW = _BASE[:8_000] + random.Random(8).randbytes(500) + _BASE[8_000:]
_GOOD_PATCH = bsdiff4.diff(_BASE, _NEW)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(_GOOD_PATCH) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_a_corrupted_patch_is_refused_or_builds_exactly_the_signed_length(edits: list[tuple[int, int]]) -> None:
    # Whatever bytes a delta holds, applying it ends in one clear refusal or in output of the signed length,
    # which the target's hash then judges: never another exception, never more bytes.
    patch = bytearray(_GOOD_PATCH)
    for at, value in edits:
        patch[at] = value
    try:
        rebuilt = apply_patch(_BASE, bytes(patch), len(_NEW))
    except DeltaUnusableError:
        return
    assert len(rebuilt) == len(_NEW)


def _blocks(patch: bytes) -> tuple[list[int], bytes, bytes]:
    control_size, diff_size = struct.unpack_from("<QQ", patch, 8)
    control = bz2.decompress(patch[32 : 32 + control_size])
    numbers = [bsdiff4.core.decode_int64(control[i : i + 8]) for i in range(0, len(control), 8)]
    diff = bz2.decompress(patch[32 + control_size : 32 + control_size + diff_size])
    return numbers, diff, bz2.decompress(patch[32 + control_size + diff_size :])


@settings(max_examples=300, deadline=None)
@given(
    changes=st.lists(st.tuples(st.integers(0, 10_000), st.integers(-(2**63) + 1, 2**63 - 1)), min_size=1, max_size=4)
)
def test_a_well_formed_patch_with_hostile_control_numbers_cannot_overrun(changes: list[tuple[int, int]]) -> None:
    # Past bzip2's checksums: the control block itself lies (huge seeks, negative or oversized copies).
    numbers, diff, extra = _blocks(_GOOD_PATCH)
    for at, value in changes:
        numbers[at % len(numbers)] = value
    control = bz2.compress(b"".join(bsdiff4.core.encode_int64(n) for n in numbers))
    blocks = control + bz2.compress(diff) + bz2.compress(extra)
    patch = _patch((len(control), len(bz2.compress(diff)), len(_NEW)), blocks)
    try:
        rebuilt = apply_patch(_BASE, patch, len(_NEW))
    except DeltaUnusableError as e:
        assert "does not apply" in str(e)
        return
    assert len(rebuilt) == len(_NEW)
