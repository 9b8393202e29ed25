"""`thingward serve` as a process of its own, as a user runs it: started on free ports, stopped with SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

THINGWARD = [sys.executable, "-m", "thingward.cli.main"]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class ServerProcess:
    mqtt_host: str
    mqtt_port: int
    api: str
    ca: Path
    process: subprocess.Popen[str]
    device_api: str = ""  # the device listener (camera uploads), HTTPS with a device certificate


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line the process prints, within `timeout`; fails with its stderr otherwise."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        process.kill()
        raise AssertionError(f"serve printed no endpoints: {process.stderr.read()}")  # type: ignore[union-attr]
    return box[0]


@contextmanager
def serving(data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    """`thingward serve --json` on free loopback ports; stopped (killed if it hangs) when the block ends."""
    process = subprocess.Popen(
        [*THINGWARD, "serve", "--data-dir", str(data_dir), "--mqtt-port", "0", "--http-port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
    )
    try:
        endpoints = json.loads(read_line(process, START_TIMEOUT))
        host, port = endpoints["mqtt"].removeprefix("mqtts://").rsplit(":", 1)
        yield ServerProcess(
            host,
            int(port),
            endpoints["api"],
            Path(endpoints["ca_certificate"]),
            process,
            endpoints.get("device_api", ""),
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; the last answer decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
