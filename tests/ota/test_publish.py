"""Publishing firmware: signed targets with custom fields, no going back in version, served with ranges."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.device.enroll import server_context
from thingward.errors import ConflictError, InvalidInputError
from thingward.ota import firmware
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform
from thingward.registry.audit_log import Actor, list_events

ACTOR = Actor("test", "pytest")
runner = CliRunner()


def _image(tmp_path: Path, name: str, size: int = 200_000) -> Path:
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(size))
    return path


def _publish(platform: Platform, repo: OtaRepository, image: Path, version: str, **kw) -> firmware.Image:
    with platform.db.session() as session:
        return firmware.publish_image(session, repo, ACTOR, image, "cam", version, **kw)


def test_publish_signs_a_content_addressed_target_with_custom_fields(platform, repo, tmp_path: Path) -> None:
    image = _image(tmp_path, "fw.img")
    published = _publish(platform, repo, image, "1.2.0", min_version="1.0")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert published.sha256 == digest and published.length == 200_000
    stored = repo.targets_dir / "cam" / f"{digest}.1.2.0.img"
    assert stored.read_bytes() == image.read_bytes()
    info = repo.targets().signed.targets["cam/1.2.0.img"]
    assert info.custom == {"model": "cam", "version": "1.2.0", "min_version": "1.0"}
    assert info.hashes == {"sha256": digest}
    repo.root().verify_delegate("targets", repo.targets())
    with platform.db.read() as session:
        assert [i.version for i in firmware.list_images(session)] == ["1.2.0"]
        assert "ota.publish" in [e.action for e in list_events(session)]


def test_version_not_greater_than_the_newest_refused(platform, repo, tmp_path: Path) -> None:
    _publish(platform, repo, _image(tmp_path, "a.img"), "1.10.0")
    for older in ("1.10.0", "1.9.9", "1.10.0rc1"):
        with pytest.raises(ConflictError, match=r"not newer than the newest published version, 1\.10\.0"):
            _publish(platform, repo, _image(tmp_path, "b.img"), older)
    _publish(platform, repo, _image(tmp_path, "c.img"), "1.10.1")  # PEP 440 order, not string order
    with platform.db.read() as session:
        assert [i.version for i in firmware.list_images(session, "cam")] == ["1.10.0", "1.10.1"]
    assert sorted(repo.targets().signed.targets) == ["cam/1.10.0.img", "cam/1.10.1.img"]


def test_bad_versions_and_files_refused_and_nothing_signed(platform, repo, tmp_path: Path) -> None:
    image = _image(tmp_path, "fw.img")
    cases = [
        ({"version": "one"}, "not a version"),
        ({"version": "1.0+dirty"}, "local part"),
        ({"version": "1.0", "min_version": "1.0"}, "must be lower"),
    ]
    for kw, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            _publish(platform, repo, image, **kw)
    with pytest.raises(InvalidInputError, match="is not a file"):
        _publish(platform, repo, tmp_path / "missing.img", "1.0")
    (tmp_path / "empty.img").touch()
    with pytest.raises(InvalidInputError, match="holds 0 bytes"):
        _publish(platform, repo, tmp_path / "empty.img", "1.0")
    assert repo.targets().signed.version == 1 and repo.targets().signed.targets == {}


def test_metadata_and_image_served_over_https_and_a_download_resumes(api, repo, tmp_path: Path) -> None:
    image = _image(tmp_path, "fw.img", 300_000)
    published = _publish(api.platform, repo, image, "2.0.0")
    context = server_context(api.platform.ca_certificate_path)
    with httpx.Client(verify=context, timeout=10) as client:
        timestamp = client.get(f"{api.url}/ota/metadata/timestamp.json")
        assert timestamp.status_code == 200 and json.loads(timestamp.content)["signed"]["_type"] == "timestamp"
        assert (
            client.get(f"{api.url}/ota/metadata/1.root.json").content
            == (repo.metadata_dir / "1.root.json").read_bytes()
        )
        assert client.get(f"{api.url}/ota/metadata/2.root.json").status_code == 404
        assert client.get(f"{api.url}/ota/metadata/signers.json").status_code == 404
        url = f"{api.url}/ota/targets/cam/{published.sha256}.2.0.0.img"
        # A download broken off after 100,000 bytes, then resumed from there.
        with client.stream("GET", url) as first:
            assert first.status_code == 200
            got = b""
            for chunk in first.iter_bytes(10_000):
                got += chunk
                if len(got) >= 100_000:
                    break
        got = got[:100_000]
        rest = client.get(url, headers={"Range": "bytes=100000-"})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == "bytes 100000-299999/300000"
        assert got + rest.content == image.read_bytes()
        assert client.get(f"{api.url}/ota/targets/cam/{'0' * 64}.2.0.0.img").status_code == 404


def test_cli_ceremony_publish_and_list(platform, tmp_path: Path) -> None:
    keys = tmp_path / "ceremony"
    os.environ["TW_TEST_ROOT_PASS"] = "a long and private passphrase"
    try:
        made = runner.invoke(
            app, ["ota", "keys", "init", "--out", str(keys), "--passphrase-env", "TW_TEST_ROOT_PASS", "--json"]
        )
        assert made.exit_code == 0, made.stderr
        assert json.loads(made.stdout)["root_threshold"] == 2
        data = ["--data-dir", str(platform.settings.data_dir), "--json"]
        refused = runner.invoke(app, ["ota", "init", "--keys", str(keys), *data])
        assert refused.exit_code == 1 and "is encrypted" in refused.stderr
        init = runner.invoke(app, ["ota", "init", "--keys", str(keys), "--passphrase-env", "TW_TEST_ROOT_PASS", *data])
        assert init.exit_code == 0, init.stderr
        assert json.loads(init.stdout)["root_version"] == 1
    finally:
        del os.environ["TW_TEST_ROOT_PASS"]
    image = _image(tmp_path, "fw.img", 1000)
    ok = runner.invoke(app, ["ota", "publish", str(image), "--model", "cam", "--version", "1.0.0", *data])
    assert ok.exit_code == 0, ok.stderr
    again = runner.invoke(app, ["ota", "publish", str(image), "--model", "cam", "--version", "0.9", *data])
    assert again.exit_code == 1 and "not newer" in again.stderr
    listed = runner.invoke(app, ["ota", "list", *data])
    assert [(i["model"], i["version"]) for i in json.loads(listed.stdout)["images"]] == [("cam", "1.0.0")]


def test_cli_root_rotation_is_recorded(platform, repo, ota_keys: Path, tmp_path: Path) -> None:
    data = ["--data-dir", str(platform.settings.data_dir), "--json"]
    new = tmp_path / "new-keys"
    assert (
        runner.invoke(app, ["ota", "keys", "init", "--out", str(new), "--root-keys", "1", "--threshold", "1"]).exit_code
        == 0
    )
    wrong = runner.invoke(app, ["ota", "root", "rotate", "--old-keys", str(new), "--new-keys", str(new), *data])
    assert wrong.exit_code == 1 and "rotating needs 2" in wrong.stderr
    done = runner.invoke(app, ["ota", "root", "rotate", "--old-keys", str(ota_keys), "--new-keys", str(new), *data])
    assert done.exit_code == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["root_version"] == 2 and out["root_threshold"] == 1 and len(out["root_keys"]) == 1
    with platform.db.read() as session:
        events = [e for e in list_events(session) if e.action == "ota.root.rotate"]
    assert len(events) == 1
    refreshed = runner.invoke(app, ["ota", "refresh", "--force", *data])
    assert json.loads(refreshed.stdout)["re_signed"] == ["targets", "snapshot", "timestamp"]
    repo.root().verify_delegate("timestamp", repo.timestamp())


def test_version_judged_against_signed_targets_the_registry_does_not_know(platform, repo, tmp_path: Path) -> None:
    # Another process signed cam 2.0.0 and has not committed its registry row yet.
    repo.add_target("cam/2.0.0.img", _image(tmp_path, "racer.img"), {"model": "cam", "version": "2.0.0"})
    with pytest.raises(ConflictError, match=r"newest published version, 2\.0\.0"):
        _publish(platform, repo, _image(tmp_path, "late.img"), "1.5.0")
    assert "cam/1.5.0.img" not in repo.targets().signed.targets


def test_paths_that_climb_out_of_the_repository_get_404(api, repo) -> None:
    context = server_context(api.platform.ca_certificate_path)
    with httpx.Client(verify=context, timeout=10) as client:
        for path in (
            "/ota/metadata/..%2Fkeys%2Fsigners.json",
            "/ota/metadata/%2E%2E%2F%2E%2E%2Fthingward.toml",
            "/ota/targets/..%2Fkeys/signers.json",
            "/ota/targets/cam/..%2F..%2Fkeys%2Fsigners.json",
            "/ota/targets/keys/signers.json",
        ):
            response = client.get(api.url + path)
            assert response.status_code == 404, path
            assert b"PRIVATE" not in response.content and b"file2:" not in response.content
