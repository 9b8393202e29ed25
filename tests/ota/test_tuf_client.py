"""`thingward-tuf-client`, the conformance-suite CLI, as a real process against the real HTTPS API."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

from thingward.ota import firmware
from thingward.registry.audit_log import Actor

CLIENT = Path(sys.executable).parent / "thingward-tuf-client"


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLIENT), *args], capture_output=True, text=True, timeout=60)


def test_init_refresh_download_and_a_tampered_target_exits_1(api, repo, tmp_path: Path) -> None:
    image = tmp_path / "fw.img"
    image.write_bytes(secrets.token_bytes(50_000))
    with api.platform.db.session() as session:
        published = firmware.publish_image(session, repo, Actor("test", "pytest"), image, "cam", "1.0.0")
    meta, out = tmp_path / "meta", tmp_path / "out"
    meta.mkdir()
    out.mkdir()
    common = ["--metadata-dir", str(meta), "--ca-certificate", str(api.platform.ca_certificate_path)]
    remote = [*common, "--metadata-url", f"{api.url}/ota/metadata/"]
    fetch = [*remote, "--target-name", "cam/1.0.0.img", "--target-base-url", f"{api.url}/ota/targets/"]

    assert _client(*common, "init", str(repo.metadata_dir / "1.root.json")).returncode == 0
    refreshed = _client(*remote, "refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert {p.name for p in meta.iterdir()} >= {"root.json", "timestamp.json", "snapshot.json", "targets.json"}
    done = _client(*fetch, "--target-dir", str(out), "--json", "download")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert Path(result["path"]).read_bytes() == image.read_bytes() and result["cached"] is False
    again = _client(*fetch, "--target-dir", str(out), "--json", "download")
    assert json.loads(again.stdout)["cached"] is True

    stored = repo.targets_dir / "cam" / f"{published.sha256}.1.0.0.img"
    raw = bytearray(stored.read_bytes())
    raw[0] ^= 0xFF
    stored.write_bytes(bytes(raw))
    fresh = tmp_path / "out2"
    fresh.mkdir()
    refused = _client(*fetch, "--target-dir", str(fresh), "download")
    assert refused.returncode == 1 and "download failed" in refused.stderr
    assert list(fresh.iterdir()) == []
    missing = _client(
        *remote, "--target-name", "cam/9.img", "--target-base-url", api.url, "--target-dir", str(fresh), "download"
    )
    assert missing.returncode == 1 and "no signed target" in missing.stderr
    # Trusting another CA, the client will not talk to this server.
    other = [*remote[2:], "--metadata-dir", str(meta), "--ca-certificate", str(tmp_path / "fw.img")]
    assert _client(*other, "refresh").returncode == 1
