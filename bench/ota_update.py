"""What TUF verification costs: publishing and a device update over loopback HTTPS, beside plain work.

Publishing (hash, content-addressed copy, sign targets/snapshot/timestamp) is set beside a bare
sha256 + copy of the same file; a device update (ngclient refresh over HTTPS, download, hash check, A/B
slot write) beside a bare httpx GET of the same image; a refresh that finds nothing new is timed alone.

    python bench/ota_update.py               # 64 MiB image, 20 refreshes
    python bench/ota_update.py --quick       # 8 MiB image, 5 refreshes

Prints figures, asserts nothing. Run on an otherwise idle machine; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from thingward.app.api import create_app
from thingward.app.https import https_server
from thingward.device.enroll import server_context
from thingward.device.update import FirmwareUpdater
from thingward.ota import firmware
from thingward.ota.keys import create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform, cli_actor, init_data_dir


def _serve(platform_: Platform) -> tuple[object, threading.Thread, str]:
    server = https_server(
        create_app(platform_), "127.0.0.1", 0, platform_.server_certificate_path, platform_.server_key_path
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the API did not start within 10 s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"https://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = (8 if args.quick else 64) * 1024 * 1024
    refreshes = 5 if args.quick else 20
    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        init_data_dir(tmp / "data")
        plat = Platform.open(tmp / "data")
        create_key_set(tmp / "keys")
        repo = OtaRepository.initialise(OtaRepository.for_data_dir(plat.settings.data_dir).path, tmp / "keys")
        image = tmp / "fw.img"
        image.write_bytes(os.urandom(size))

        start = time.perf_counter()
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        shutil.copyfile(image, tmp / "copy.img")
        bare_publish = time.perf_counter() - start

        start = time.perf_counter()
        with plat.db.session() as session:
            firmware.publish_image(session, repo, cli_actor(), image, "cam", "2.0.0")
        publish = time.perf_counter() - start

        server, thread, url = _serve(plat)
        try:
            context = server_context(plat.ca_certificate_path)
            start = time.perf_counter()
            with (
                httpx.Client(verify=context, timeout=60) as client,
                client.stream("GET", f"{url}/ota/targets/cam/{digest}.2.0.0.img") as response,
            ):
                got = sum(len(chunk) for chunk in response.iter_bytes(64 * 1024))
            bare_get = time.perf_counter() - start
            assert got == size

            device = FirmwareUpdater.provision(
                tmp / "dev",
                (repo.metadata_dir / "1.root.json").read_bytes(),
                b"factory",
                "1.0.0",
                url,
                plat.ca_certificate_path,
                "cam",
            )
            start = time.perf_counter()
            outcome = device.update()
            update = time.perf_counter() - start
            assert outcome.status == "installed"
            device.boot(lambda slot, version: True)

            start = time.perf_counter()
            for _ in range(refreshes):
                assert device.update().status == "up_to_date"
            refresh = (time.perf_counter() - start) / refreshes
        finally:
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(10)
            plat.close()

    mib = size / 1024 / 1024
    print(
        f"# OTA, {mib:.0f} MiB image, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    print("| step | seconds | MiB/s | vs bare |")
    print("|---|---:|---:|---:|")
    print(
        f"| publish (hash, copy, sign 3 roles, registry row) | {publish:.3f} | {mib / publish:.0f} | "
        f"{publish / bare_publish:.2f}x |"
    )
    print(f"| bare sha256 + copy | {bare_publish:.3f} | {mib / bare_publish:.0f} | 1.00x |")
    print(
        f"| device update (refresh, download, verify, slot write) | {update:.3f} | {mib / update:.0f} | "
        f"{update / bare_get:.2f}x |"
    )
    print(f"| bare httpx GET of the image over HTTPS | {bare_get:.3f} | {mib / bare_get:.0f} | 1.00x |")
    print(f"| refresh with nothing new (mean of {refreshes}) | {refresh * 1000:.1f} ms | | |")


if __name__ == "__main__":
    main()
