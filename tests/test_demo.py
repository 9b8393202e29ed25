"""`thingward demo` and `thingward simulate`, run as a user would, for a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

THINGWARD = [sys.executable, "-m", "thingward.cli.main"]


def test_demo_runs_the_journey_and_shows_the_refused_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    result = subprocess.run(
        [*THINGWARD, "demo", "--data-dir", str(data_dir), "--duration", "6", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mqtt"].startswith("mqtts://127.0.0.1:")
    assert summary["api"].startswith("https://127.0.0.1:")
    cameras = summary["cameras"]
    assert set(cameras) == {"front-door-cam", "backyard-cam"}
    for stats in cameras.values():
        assert stats["telemetry_sent"] >= 3
        # QoS 1 from a clean shutdown: everything sent is stored.
        assert stats["stored"] == stats["telemetry_sent"] + stats["events_sent"]
    assert summary["refused"] == [
        {"thing": "front-door-cam", "action": "subscribe", "topic": "things/backyard-cam/#", "result": "refused"}
    ]
    # The backyard camera reports old firmware with Telnet open; the audit at the end finds both.
    top = {(f["check"], f["resource"]) for f in summary["audit"]["top"]}
    assert ("DEVICE_OPEN_PORTS", "thing:backyard-cam") in top
    assert ("FIRMWARE_ADVISORY", "thing:backyard-cam") in top
    assert summary["audit"]["findings"]["critical"] >= 1
    assert not any(f["resource"] == "thing:front-door-cam" for f in summary["audit"]["top"])
    # A second run reuses the demo data dir and its enrolled cameras.
    again = subprocess.run(
        [*THINGWARD, "demo", "--data-dir", str(data_dir), "--duration", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout.strip().splitlines()[-1])
    for stats in second["cameras"].values():
        # Counted for this run only, although the data dir holds the first run's messages too.
        assert stats["stored"] == stats["telemetry_sent"] + stats["events_sent"]
