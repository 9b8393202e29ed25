"""A rollout to a simulated fleet on loopback: wall time, per-wave figures, and server CPU per device.

`thingward serve` runs as a process of its own (its CPU time is read from /proc through psutil); the
devices are job agents in this process (`thingward.device.jobs.JobAgent`: real mutual-TLS MQTT, a real
TUF refresh and image download over HTTPS, a real A/B slot write and trial boot), two threads each. The
rollout uses the default waves (1, 10, 50, 100 %) and a rate high enough not to be the limit, so the
figures show the cost of the machinery and the scheduler's one-second tick at each wave boundary.

    python bench/rollout.py                  # 200 devices (several minutes on 2 cores)
    python bench/rollout.py --devices 20     # a quick look

Prints figures, asserts nothing. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from thingward.device.enroll import enroll
from thingward.device.jobs import JobAgent
from thingward.device.update import FirmwareUpdater
from thingward.ota import firmware, rollout
from thingward.ota.keys import create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform, cli_actor, init_data_dir
from thingward.registry import device_state, things

SETTLE_LIMIT = 1800.0  # seconds: the whole rollout must end within this, or the bench gives up


def _serve(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "thingward.cli.main", "--log-level", "warning", "serve"),
            *("--data-dir", str(data_dir), "--mqtt-port", "0", "--http-port", "0", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not box or not box[0]:
        process.kill()
        raise RuntimeError("thingward serve did not start within 30 s")
    return process, json.loads(box[0])


def _wait(predicate: object, limit: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--image-kib", type=int, default=256)
    args = parser.parse_args()
    count = max(1, min(args.devices, 1000))
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        init_data_dir(data_dir)
        plat = Platform.open(data_dir)
        create_key_set(tmp / "keys", root_keys=1, root_threshold=1)
        repo = OtaRepository.initialise(OtaRepository.for_data_dir(data_dir).path, tmp / "keys")
        root = (repo.metadata_dir / "1.root.json").read_bytes()
        image = tmp / "fw.img"
        image.write_bytes(os.urandom(args.image_kib * 1024))
        with plat.db.session() as session:
            firmware.publish_image(session, repo, cli_actor(), image, "bench-cam", "2.0.0")
            things.add_group(session, cli_actor(), "fleet", parent=things.DEFAULT_GROUP)
        server, endpoints = _serve(data_dir)
        host, port = endpoints["mqtt"].removeprefix("mqtts://").rsplit(":", 1)
        ca = Path(endpoints["ca_certificate"])
        agents: list[JobAgent] = []
        try:
            started = time.perf_counter()
            for i in range(count):
                name = f"bench-{i:04d}"
                with plat.db.session() as session:
                    things.add_thing(session, cli_actor(), name, ["fleet"])
                    token = things.create_enrollment_token(session, cli_actor(), name, dt.timedelta(hours=1)).token
                enroll(endpoints["api"], token, ca, tmp / name / "identity")
                updater = FirmwareUpdater.provision(
                    tmp / name / "ota", root, b"factory", "1.0.0", endpoints["api"], ca, "bench-cam"
                )
                agent = JobAgent(name, tmp / name / "identity", updater, host, int(port))
                agent.start()
                agents.append(agent)

            def reported() -> bool:
                with plat.db.read() as session:
                    return sum(1 for r in device_state.latest_reports(session) if r.model == "bench-cam") >= count

            if not _wait(reported, 300):
                raise RuntimeError("not every device connected and reported within 300 s")
            setup = time.perf_counter() - started

            server_process = psutil.Process(server.pid)
            cpu_before = sum(server_process.cpu_times()[:2])
            begin = time.perf_counter()
            options = rollout.RolloutOptions(max_per_minute=100_000, abort_min_finished=count + 1, timeout_seconds=600)
            with plat.db.session() as session:
                campaign = rollout.create_rollout(session, cli_actor(), "bench-cam", "2.0.0", "fleet", options)

            def finished() -> bool:
                with plat.db.read() as session:
                    return rollout.get_rollout(session, campaign.id).state not in {"running", "paused"}

            if not _wait(finished, SETTLE_LIMIT):
                raise RuntimeError(f"the rollout did not end within {SETTLE_LIMIT:.0f} s")
            wall = time.perf_counter() - begin
            cpu = sum(server_process.cpu_times()[:2]) - cpu_before
            with plat.db.read() as session:
                shown = rollout.get_rollout(session, campaign.id)
        finally:
            for agent in agents:
                agent.request_stop()
            for agent in agents:
                agent.stop(10)
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            plat.close()

    print(
        f"# rollout to {count} simulated devices, {args.image_kib} KiB image, "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(f"enrolling, provisioning and connecting the fleet: {setup:.1f} s (not part of the rollout)")
    print(f"rollout: {shown.state} in {wall:.1f} s; {shown.counts}")
    print(f"server CPU: {cpu:.2f} s in all, {cpu / count * 1000:.1f} ms per device")
    print("| wave | share | devices | first sent (s) | last finished (s) | wave time (s) | median job (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    shares = shown.wave_shares()
    for index, size in enumerate(shown.wave_sizes):
        jobs = [j for j in shown.jobs if j.wave == index and j.released_at and j.finished_at]
        if not jobs:
            print(f"| {index + 1} | {shares[index]}% | {size} | - | - | - | - |")
            continue
        created = shown.created_at
        first = min(j.released_at for j in jobs if j.released_at) - created
        last = max(j.finished_at for j in jobs if j.finished_at) - created
        durations = sorted(
            (j.finished_at - j.released_at).total_seconds() for j in jobs if j.finished_at and j.released_at
        )
        median = durations[len(durations) // 2]
        print(
            f"| {index + 1} | {shares[index]}% | {size} | {first.total_seconds():.1f} | "
            f"{last.total_seconds():.1f} | {(last - first).total_seconds():.1f} | {median:.1f} |"
        )


if __name__ == "__main__":
    main()
