"""Delta images: how large a bsdiff4 delta is beside the full image (and beside xz/zstd of it), and what it costs.

Image pairs, each an old and a new release:
- `hello-dyn`, `hello-static`: a small C program built by gcc, dynamically and statically linked; the new
  release changes one constant and adds one function.
- `firmware`: a generated C "firmware" (3,000 small functions that call each other, and 3 MiB of resources
  linked in with .incbin: half random blobs, half text), statically linked, about 4 MiB; the new release
  changes a constant, three function bodies and a 4 KiB resource, and adds one function in the middle of the
  code, so everything after it moves (the hard case for a binary diff).
- `synthetic`: 4 MiB of random bytes with one 64 KiB region rewritten and 300 bytes inserted.

For each: full size, delta size and its share of the full image, make and apply times (median of --runs),
and the full image compressed with xz -9 and zstd -19 (what a device would download without deltas but with
compression). detools is measured too when it is importable; it is not a dependency of thingward.
Then the firmware pair goes through thingward: published with its delta, and two devices update over
loopback HTTPS, one by the delta and one by the full image.

    .venv/bin/python bench/delta.py            # about 3 minutes on 2 cores, most of it gcc
    .venv/bin/python bench/delta.py --runs 1   # quicker

Prints figures, asserts only that every delta (and every device update) rebuilds its image byte for byte.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import lzma
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bsdiff4

from thingward.app.api import create_app
from thingward.app.https import https_server
from thingward.device.delta import apply_patch
from thingward.device.update import FirmwareUpdater
from thingward.ota import delta, firmware
from thingward.ota.keys import create_key_set
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform, cli_actor, init_data_dir

Make = Callable[[bytes, bytes], bytes]
Apply = Callable[[bytes, bytes, int], bytes]  # old image, patch, the new image's (signed) length

HELLO = """
#include <stdio.h>
#include <string.h>

#define REPORT_INTERVAL_SECONDS {interval}

static int checksum(const char *s) {{
    int sum = 0;
    for (size_t i = 0; i < strlen(s); i++) sum = sum * 31 + s[i];
    return sum;
}}
{extra}
int main(int argc, char **argv) {{
    const char *name = argc > 1 ? argv[1] : "camera";
    printf("%s reports every %d s, id %d\\n", name, REPORT_INTERVAL_SECONDS, checksum(name));
    {call}
    return 0;
}}
"""

HELLO_EXTRA = """
static int motion_threshold(int frame_delta) {
    return frame_delta > 12 ? frame_delta * 3 / 2 : 0;
}
"""


ASSET_BYTES = 3 * 1024 * 1024


def assets(new: bool) -> bytes:
    """The firmware's resources: half already-compressed blobs (images, a model: random bytes), half text
    (web UI, strings: words); the new release replaces one 4 KiB certificate in the middle."""
    rng = random.Random(1)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(2000)] + [b"<div>", b"</div>", b" "]
    text = bytearray()
    while len(text) < ASSET_BYTES // 2:
        text += rng.choice(words) + b" "
    data = bytearray(rng.randbytes(ASSET_BYTES // 2) + text[: ASSET_BYTES - ASSET_BYTES // 2])
    if new:
        data[ASSET_BYTES // 2 : ASSET_BYTES // 2 + 4096] = random.Random(2).randbytes(4096)
    return bytes(data)


def firmware_source(functions: int, new: bool, assets_file: Path) -> str:
    """A generated firmware: functions calling earlier ones, linked-in resources, a version constant."""
    words = ASSET_BYTES // 4
    lines = [
        "#include <stdio.h>",
        "#include <stdlib.h>",
        # The resources go in as they are (.incbin), as a firmware build links its blobs.
        '__asm__(".section .rodata\\n.global assets\\n.balign 16\\nassets:\\n"'
        f'".incbin \\"{assets_file}\\"\\n.previous");',
        "extern const unsigned assets[];",
        f'const char version[] = "{"2.0.0" if new else "1.9.0"}";',
        f"#define RETRY_LIMIT {7 if new else 5}",
    ]
    changed = {functions // 5, functions // 2 + 3, functions - 20} if new else set()
    for i in range(functions):
        if new and i == functions // 2:
            lines.append(
                "__attribute__((noinline)) unsigned tamper_check(unsigned x) {"
                " for (int k = 0; k < RETRY_LIMIT; k++) x = (x << 5) ^ (x >> 3) ^ assets[(x + k) % 4096];"
                " return x; }"
            )
        a, b = (i * 2654435761) & 0xFFFF, (i * 40503) & 0xFFF
        op = "+" if i not in changed else "-"
        call = f"x = f{(i * 7) % i}(x {op} {b}u);" if i else ""
        lines.append(
            f"__attribute__((noinline)) unsigned f{i}(unsigned x) {{ x ^= {a}u; {call}"
            f" if (x & {1 << (i % 8)}u) x = x * {2 * a + 1}u + assets[{(i * 13) % words}];"
            f" for (int k = 0; k < RETRY_LIMIT; k++) x += (x >> {1 + i % 13}) ^ {b}u; return x; }}"
        )
    lines.append("int main(int argc, char **argv) { unsigned x = argc > 1 ? (unsigned)atoi(argv[1]) : 1;")
    calls = [f"x = f{i}(x);" for i in range(0, functions, max(1, functions // 64))]
    if new:
        calls.append("x = tamper_check(x);")
    lines.append(" ".join(calls))
    lines.append('printf("%s %u\\n", version, x); return 0; }')
    return "\n".join(lines) + "\n"


def gcc(source: str, out: Path, static: bool, optimise: str = "-O1") -> bytes:
    src = out.with_suffix(".c")
    src.write_text(source)
    command = ["gcc", optimise, "-o", str(out), str(src), *(["-static"] if static else [])]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    subprocess.run(["strip", str(out)], check=True, timeout=60)
    return out.read_bytes()


def median_seconds(work: Callable[[], object], runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def zstd_size(data: bytes, tmp: Path) -> int | None:
    if shutil.which("zstd") is None:
        return None
    path = tmp / "z.in"
    path.write_bytes(data)
    out = subprocess.run(["zstd", "-19", "-q", "-c", str(path)], check=True, capture_output=True, timeout=600)
    return len(out.stdout)


def detools_pair() -> tuple[Make, Apply] | None:
    try:
        detools = importlib.import_module("detools")
    except ImportError:
        return None
    import io

    def make(old: bytes, new: bytes) -> bytes:
        out = io.BytesIO()
        detools.create_patch(io.BytesIO(old), io.BytesIO(new), out, compression="lzma")
        return out.getvalue()

    def apply(old: bytes, patch: bytes, length: int) -> bytes:
        out = io.BytesIO()
        detools.apply_patch(io.BytesIO(old), io.BytesIO(patch), out)
        return out.getvalue()

    return make, apply


def pairs(tmp: Path, functions: int) -> list[tuple[str, bytes, bytes]]:
    hello_old = HELLO.format(interval=60, extra="", call="")
    hello_new = HELLO.format(interval=30, extra=HELLO_EXTRA, call='printf("%d\\n", motion_threshold(argc * 10));')
    made = []
    for name, static in (("hello-dyn", False), ("hello-static", True)):
        made.append((name, gcc(hello_old, tmp / f"{name}-old", static), gcc(hello_new, tmp / f"{name}-new", static)))
    started = time.perf_counter()
    built = []
    for new_release in (False, True):
        blob = tmp / f"assets-{new_release}.bin"
        blob.write_bytes(assets(new_release))
        built.append(gcc(firmware_source(functions, new_release, blob), tmp / f"fw-{new_release}", static=True))
    old, new = built
    print(f"(built the generated firmware twice in {time.perf_counter() - started:.0f} s)")
    made.append(("firmware", old, new))
    base = os.urandom(4 * 1024 * 1024)
    at = 1_500_000
    changed = base[:at] + os.urandom(64 * 1024) + base[at + 64 * 1024 : 3_000_000] + os.urandom(300) + base[3_000_000:]
    made.append(("synthetic", base, changed))
    return made


def device_updates(tmp: Path, old: bytes, new: bytes, runs: int) -> None:
    """Publish the firmware pair (the deltas made as `ota publish` makes them), then update two devices over
    loopback HTTPS: one by the delta, one whose version has no delta (the full image)."""
    init_data_dir(tmp / "data")
    plat = Platform.open(tmp / "data")
    create_key_set(tmp / "keys")
    repo = OtaRepository.initialise(OtaRepository.for_data_dir(plat.settings.data_dir).path, tmp / "keys")
    for version, image in (("1.9.0", old), ("2.0.0", new)):
        (tmp / "fw.img").write_bytes(image)
        started = time.perf_counter()
        with plat.db.session() as session:
            firmware.publish_image(session, repo, cli_actor(), tmp / "fw.img", "cam", version)
        publish = time.perf_counter() - started
        started = time.perf_counter()
        with plat.db.session() as session:
            report = delta.make_deltas(session, repo, cli_actor(), "cam", version)
        made = time.perf_counter() - started
    print(f"publish of 2.0.0: {publish:.2f} s for the image, {made:.2f} s more for {len(report.made)} delta(s)")
    server = https_server(create_app(plat), "127.0.0.1", 0, plat.server_certificate_path, plat.server_key_path)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start within 10 s")
            time.sleep(0.01)
        url = f"https://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        print("| device update (refresh, fetch, verify, A/B slot write) | seconds | bytes downloaded | + at 1 Mbit/s |")
        print("|---|---:|---:|---:|")
        timings: dict[str, list[float]] = {}
        fetched: dict[str, int] = {}
        kinds = (("by the delta from 1.9.0", "1.9.0"), ("full image (runs 1.8.0: no delta)", "1.8.0"))
        for attempt in range(runs):  # fresh devices each round, the two kinds alternating
            for label, running in kinds:
                device = FirmwareUpdater.provision(
                    tmp / f"dev-{running}-{attempt}",
                    (repo.metadata_dir / "1.root.json").read_bytes(),
                    old,
                    running,
                    url,
                    plat.ca_certificate_path,
                    "cam",
                )
                started = time.perf_counter()
                outcome = device.update()
                timings.setdefault(label, []).append(time.perf_counter() - started)
                if outcome.status != "installed" or device.slots.slot_file("b").read_bytes() != new:
                    raise SystemExit(f"the device update {label} did not install the image: {outcome}")
                fetched[label] = outcome.downloaded_bytes
        for label, _ in kinds:
            seconds = statistics.median(timings[label])
            print(f"| {label} | {seconds:.3f} | {fetched[label]} | {fetched[label] * 8 / 1e6:.1f} s |")
    finally:
        server.should_exit = True
        thread.join(10)
        plat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each make and apply (median)")
    parser.add_argument("--functions", type=int, default=3_000, help="functions in the generated firmware")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, bsdiff4 {bsdiff4.__version__}, {os.cpu_count()} cores")
    # bsdiff4 is applied the way a device applies it: thingward's bounded reader, then bsdiff4's C core.
    tools: list[tuple[str, Make, Apply]] = [("bsdiff4", bsdiff4.diff, apply_patch)]
    detools = detools_pair()
    if detools is None:
        print("detools: not importable here, not measured (it is not a thingward dependency)")
    else:
        tools.append(("detools", *detools))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = pairs(tmp, args.functions)
        header = f"{'image':<13} {'tool':<8} {'full B':>9} {'delta B':>9} {'share':>7} {'make s':>7} {'apply s':>8}"
        header += f" {'xz -9 B':>9} {'zstd -19 B':>10} {'delta/xz':>8}"
        print(header)
        for name, old, new in images:
            xz = len(lzma.compress(new, preset=9))
            zstd = zstd_size(new, tmp)
            for tool, make, apply in tools:
                make_s, patch = median_seconds(lambda make=make, old=old, new=new: make(old, new), args.runs)
                assert isinstance(patch, bytes)
                apply_s, rebuilt = median_seconds(
                    lambda apply=apply, old=old, patch=patch, new=new: apply(old, patch, len(new)), args.runs
                )
                if rebuilt != new:
                    raise SystemExit(f"{tool} did not rebuild {name}")
                print(
                    f"{name:<13} {tool:<8} {len(new):>9} {len(patch):>9} {len(patch) / len(new):>7.2%}"
                    f" {make_s:>7.3f} {apply_s:>8.3f} {xz:>9} {zstd if zstd is not None else '-':>10}"
                    f" {len(patch) / xz:>8.2%}"
                )
        firmware_old, firmware_new = next((old, new) for name, old, new in images if name == "firmware")
        logging.disable(logging.WARNING)
        device_updates(tmp, firmware_old, firmware_new, args.runs)


if __name__ == "__main__":
    main()
