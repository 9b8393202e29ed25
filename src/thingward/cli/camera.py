"""`thingward camera ...`: simulated security cameras that upload snapshots and report motion."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError

app = typer.Typer(help="Cameras: snapshots over mutual TLS, motion analysed, people notified.", no_args_is_help=True)


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, _, port = value.removeprefix("mqtts://").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInputError(f"{option} must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


@app.command("simulate")
@handle_errors
def simulate(
    name: Annotated[str, typer.Argument(help="The camera's thing name (registered and enrolled if new).")],
    api: Annotated[
        str | None, typer.Option("--api", help="The server's HTTPS API, for enrollment [default: from config].")
    ] = None,
    device_api: Annotated[
        str | None,
        typer.Option("--device-api", help="The server's device listener, for uploads [default: from config]."),
    ] = None,
    mqtt: Annotated[str | None, typer.Option("--mqtt", help="The broker as HOST:PORT [default: from config].")] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between motions.")] = 5.0,
    count: Annotated[int, typer.Option("--count", min=0, help="Stop after this many motions (0: until Ctrl-C).")] = 0,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a simulated camera against a running `thingward serve`: a still scene, then every INTERVAL
    seconds a person walks in; each time it uploads the snapshot with its own certificate and publishes
    a motion event. The people the camera is shared with get a notification with the marked image."""
    from thingward.device.camera import simulate_camera

    platform = open_platform(data_dir)
    server = platform.settings.server
    api = api or f"https://{server.host}:{server.http_port}"
    device_api = device_api or f"https://{server.host}:{server.device_port}"
    mqtt_host, mqtt_port = _host_port(mqtt or f"{server.host}:{platform.settings.mqtt.port}", "--mqtt")
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())

    def shown(last: dict[str, Any]) -> None:
        if not as_json:
            person = last["person"]
            console.print(
                f"{name}: motion, snapshot {last['snapshot_id']} uploaded ({last['size_bytes']} bytes), "
                f"person at x={person['x']} y={person['y']} {person['width']}x{person['height']}"
            )

    try:
        stats = simulate_camera(
            platform, name, api, device_api, mqtt_host, mqtt_port, interval, count, stop, on_motion=shown
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    emit(
        as_json,
        {"camera": name, "snapshots": stats.snapshots, "motion_events": stats.motion_events, "errors": stats.errors},
    )
