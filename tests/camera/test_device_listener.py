"""The device listener: only a device with a good certificate from the platform CA gets an upload URL, and
an upload URL works once, for its own device, before it expires, for its type and size."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from thingward.device.camera import CameraUploadError, SnapshotUploader, encode, still_scene
from thingward.device.client import client_tls_context
from thingward.device.enroll import CA_FILE, CERT_FILE, KEY_FILE
from thingward.pki.ca import THING_URI_PREFIX, certificate_pem, private_key_pem
from thingward.pki.files import write_atomic, write_secret
from thingward.platform import cli_actor
from thingward.registry.models import CameraSnapshot

JPEG = encode(still_scene(160, 120))
# With TLS 1.3 the client's handshake ends before the server judged its certificate: the refusal then
# arrives as a closed connection instead of a failed handshake.
HANDSHAKE_REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


def _client(directory: Path) -> httpx.Client:
    return httpx.Client(
        verify=client_tls_context(directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE), timeout=10
    )


def _snapshots(lab) -> int:
    with lab.platform.db.read() as session:
        return int(session.execute(select(func.count()).select_from(CameraSnapshot)).scalar_one())


def test_a_device_uploads_a_snapshot_with_its_certificate(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant()
        assert grant["method"] == "PUT" and grant["content_type"] == "image/jpeg"
        expires = dt.datetime.fromisoformat(grant["expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(seconds=50) < expires <= dt.timedelta(seconds=60)
        stored = uploader.put(grant, JPEG)
    finally:
        uploader.close()
    assert stored["thing"] == "cam-a" and (stored["width"], stored["height"]) == (160, 120)
    path = lab.platform.settings.data_dir / "camera" / "snapshots" / "cam-a" / f"{grant['upload_id']}.jpg"
    assert path.read_bytes() == JPEG
    assert path.stat().st_mode & 0o777 == 0o600


def test_no_client_certificate_is_refused_in_the_handshake(lab) -> None:
    context = ssl.create_default_context(cafile=str(lab.platform.ca_certificate_path))
    with httpx.Client(verify=context, timeout=10) as client, pytest.raises(HANDSHAKE_REFUSED):
        client.post(f"{lab.device_api}/device/v1/uploads", json={})


def test_a_certificate_from_another_ca_is_refused(lab, tmp_path: Path) -> None:
    """A self-made certificate naming a real thing: the handshake fails, the name buys nothing."""
    lab.enroll("cam-a")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-a")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(THING_URI_PREFIX + "cam-a")]), False)
        .sign(key, hashes.SHA256())
    )
    forged = tmp_path / "forged"
    write_atomic(forged / CERT_FILE, certificate_pem(cert))
    write_secret(forged / KEY_FILE, private_key_pem(key))
    write_atomic(forged / CA_FILE, lab.platform.ca_certificate_path.read_bytes())
    with _client(forged) as client, pytest.raises(HANDSHAKE_REFUSED):
        client.post(f"{lab.device_api}/device/v1/uploads", json={})


def test_a_revoked_device_is_refused_before_and_after_the_crl_reload(lab) -> None:
    directory = lab.enroll("cam-a")
    lab.platform.revoke(cli_actor(), "cam-a", "key compromise")
    # Before the server reloaded its CRL, the registry check refuses the request ...
    with _client(directory) as client:
        response = client.post(f"{lab.device_api}/device/v1/uploads", json={})
    assert response.status_code == 403 and "revoked" in response.json()["error"]
    # ... after it, the handshake itself.
    lab.sync()
    with _client(directory) as client, pytest.raises(HANDSHAKE_REFUSED):
        client.post(f"{lab.device_api}/device/v1/uploads", json={})


def test_a_disabled_device_is_refused(lab) -> None:
    from thingward.registry import certificates

    directory = lab.enroll("cam-a")
    with lab.platform.db.session() as session:
        certificates.set_thing_disabled(session, cli_actor(), "cam-a", True)
    with _client(directory) as client:
        response = client.post(f"{lab.device_api}/device/v1/uploads", json={})
    assert response.status_code == 403 and "disabled" in response.json()["error"]


def test_a_quarantined_device_gets_no_upload_url(lab) -> None:
    from thingward.audit.mitigate import _quarantine  # what `audit mitigate --action quarantine` applies

    directory = lab.enroll("cam-a")
    with lab.platform.db.session() as session:
        _quarantine(session, cli_actor(), "test-finding", "cam-a")
    lab.sync()
    with _client(directory) as client:
        response = client.post(f"{lab.device_api}/device/v1/uploads", json={})
    assert response.status_code == 403 and "quarantined" in response.json()["error"]


def test_another_devices_upload_url_is_refused(lab) -> None:
    mine, theirs = SnapshotUploader(lab.device_api, lab.enroll("cam-a")), lab.enroll("cam-b")
    try:
        grant = mine.grant()
    finally:
        mine.close()
    with _client(theirs) as client:
        response = client.put(grant["url"], content=JPEG, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 403 and "another device" in response.json()["error"]
    assert _snapshots(lab) == 0


def test_a_replayed_upload_is_refused(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant()
        uploader.put(grant, JPEG)
        with pytest.raises(CameraUploadError, match=r"\(409\).*used already"):
            uploader.put(grant, JPEG)
    finally:
        uploader.close()
    assert _snapshots(lab) == 1


def test_an_expired_upload_url_is_refused(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant()
        lab.clock.advance(61)
        with pytest.raises(CameraUploadError, match=r"\(410\).*expired"):
            uploader.put(grant, JPEG)
    finally:
        uploader.close()
    assert _snapshots(lab) == 0


def test_a_wrong_token_is_refused(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant()
        forged = {**grant, "url": grant["url"].split("?")[0] + "?token=guessed"}
        with pytest.raises(CameraUploadError, match=r"\(404\).*wrong token"):
            uploader.put(forged, JPEG)
    finally:
        uploader.close()


def test_an_oversized_upload_is_refused_before_its_body_is_read(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant(max_bytes=len(JPEG) - 1)
        with pytest.raises(CameraUploadError, match=r"\(413\).*over this URL's limit"):
            uploader.put(grant, JPEG)
        with pytest.raises(CameraUploadError, match=r"\(400\).*max_bytes must be"):
            uploader.grant(max_bytes=64 * 1024 * 1024)
    finally:
        uploader.close()
    assert _snapshots(lab) == 0


def test_a_chunked_upload_without_length_is_refused(lab) -> None:
    directory = lab.enroll("cam-a")
    uploader = SnapshotUploader(lab.device_api, directory)
    try:
        grant = uploader.grant()
    finally:
        uploader.close()
    with _client(directory) as client:
        response = client.put(grant["url"], content=iter([JPEG]), headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 411
    assert _snapshots(lab) == 0


def test_the_wrong_content_type_is_refused(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant("image/png")
        with pytest.raises(CameraUploadError, match=r"\(415\).*image/jpeg but this upload URL is for image/png"):
            uploader.put({**grant, "content_type": "image/jpeg"}, JPEG)
        with pytest.raises(CameraUploadError, match=r"\(400\).*not accepted"):
            uploader.grant("image/svg+xml")
    finally:
        uploader.close()


def test_a_corrupt_image_is_refused_and_nothing_is_stored(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grant = uploader.grant()
        with pytest.raises(CameraUploadError, match=r"\(400\).*corrupt or truncated.*nothing was stored"):
            uploader.put(grant, JPEG[: len(JPEG) // 2])
    finally:
        uploader.close()
    assert _snapshots(lab) == 0
    assert not (lab.platform.settings.data_dir / "camera" / "snapshots" / "cam-a").exists() or not any(
        (lab.platform.settings.data_dir / "camera" / "snapshots" / "cam-a").iterdir()
    )


def test_a_device_holds_only_so_many_unused_upload_urls(lab) -> None:
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        grants = [uploader.grant() for _ in range(10)]
        with pytest.raises(CameraUploadError, match=r"\(429\).*unused upload URLs"):
            uploader.grant()
        uploader.put(grants[0], JPEG)  # a spent one no longer counts
        uploader.grant()
    finally:
        uploader.close()


def test_a_large_grant_request_is_refused_before_it_is_parsed(lab) -> None:
    with _client(lab.enroll("cam-a")) as client:
        response = client.post(
            f"{lab.device_api}/device/v1/uploads", content=b'{"content_type": "' + b"x" * 5000 + b'"}'
        )
    assert response.status_code == 413


def test_old_snapshots_are_deleted_past_the_per_camera_limit(lab) -> None:
    from thingward.camera.service import CameraSettings
    from thingward.camera.uploads import UploadLimits

    lab.server.camera.settings = CameraSettings(uploads=UploadLimits(keep_per_camera=2))
    uploader = SnapshotUploader(lab.device_api, lab.enroll("cam-a"))
    try:
        uploads = [uploader.upload(JPEG)["upload_id"] for _ in range(4)]
    finally:
        uploader.close()
    assert _snapshots(lab) == 2
    folder = lab.platform.settings.data_dir / "camera" / "snapshots" / "cam-a"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{u}.jpg" for u in uploads[2:])


def test_the_device_app_served_without_the_listener_refuses_everyone(lab) -> None:
    """Mounted behind a listener that names no device (a mistake in wiring), it fails closed."""
    import asyncio

    from thingward.app.camera_api import create_device_app

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_device_app(lab.server.camera, lab.server.engine))
        async with httpx.AsyncClient(transport=transport, base_url="https://device.test") as client:
            return await client.post("/device/v1/uploads", json={})

    response = asyncio.run(post())
    assert response.status_code == 403 and "device certificate" in response.json()["error"]
