"""What the motion analysis of one snapshot costs: decode (Pillow), compare (NumPy), mark the region.

Frames are the simulated camera's (a still scene, then a person in it), encoded as JPEG at 640x480 and
1920x1080. Prints the median of each step and the snapshots per second one core analyses; the reference in
the same run is a plain full-resolution NumPy difference of the two frames (no reduction, no bounding box).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from thingward.camera.analysis import annotate, compare, decode_image
from thingward.device.camera import encode, frame_with, still_scene


def timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(width: int, height: int, runs: int) -> tuple[float, float, float, float]:
    """Medians of decode, compare, annotate, and the plain difference, in seconds."""
    rng = np.random.default_rng(1)
    scene = still_scene(width, height)
    before = encode(frame_with(scene, None, rng))
    after = encode(frame_with(scene, (width // 3, height * 9 // 10), rng))
    reference, current = decode_image(before, "image/jpeg"), decode_image(after, "image/jpeg")
    analysis = compare(reference.gray, current.gray)
    if not analysis.motion or analysis.region is None:
        raise SystemExit("the benchmark's frames show no motion: the analysis is broken")
    region = analysis.region
    return (
        timed(lambda: decode_image(after, "image/jpeg"), runs),
        timed(lambda: compare(reference.gray, current.gray), runs),
        timed(lambda: annotate(current.rgb, region), runs),
        timed(lambda: (np.abs(current.gray - reference.gray) > 25).mean(), runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    runs = max(1, min(parser.parse_args().runs, 500))
    print(f"{'size':>10} {'decode':>9} {'compare':>9} {'annotate':>9} {'total':>9} {'per s':>7} {'plain diff':>11}")
    for width, height in ((640, 480), (1920, 1080)):
        decode_s, compare_s, annotate_s, plain_s = measure(width, height, runs)
        total = decode_s + compare_s + annotate_s
        print(
            f"{width}x{height:<5} {decode_s * 1e3:7.2f}ms {compare_s * 1e3:7.2f}ms {annotate_s * 1e3:7.2f}ms "
            f"{total * 1e3:7.2f}ms {1 / total:7.0f} {plain_s * 1e3:9.2f}ms"
        )


if __name__ == "__main__":
    main()
