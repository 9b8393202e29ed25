"""The `thingward` command: init, serve, simulate, demo, and the nouns (device, group, policy, log)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from thingward import __version__
from thingward.cli import audit, device, group, model, onboard, ota, policy, scan, user
from thingward.cli import camera as camera_cli
from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.config import BROKERS
from thingward.errors import ConfigError
from thingward.logs import configure_logging
from thingward.platform import init_data_dir

app = typer.Typer(
    name="thingward",
    help="thingward: a self-hosted, secure-by-default IoT platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(device.app, name="device")
app.add_typer(group.app, name="group")
app.add_typer(policy.app, name="policy")
app.add_typer(audit.app, name="audit")
app.add_typer(model.app, name="model")
app.add_typer(ota.app, name="ota")
app.add_typer(user.app, name="user")
app.add_typer(camera_cli.app, name="camera")
app.command("scan")(scan.scan)
app.command("onboard")(onboard.onboard)
device.app.command("label")(onboard.label_command)
device.app.command("onboard-agent")(onboard.onboard_agent)


def _version(value: bool) -> None:
    if value:
        console.print(f"thingward {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")] = "info",
    log_format: Annotated[str, typer.Option("--log-format", help="text or json (one object per line).")] = "text",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    configure_logging(log_level, log_format)


@app.command("init")
@handle_errors
def init(
    data_dir: DataDir = None,
    hostname: Annotated[
        list[str] | None,
        typer.Option("--hostname", help="Extra DNS name or IP for the server certificate (repeatable)."),
    ] = None,
    ca_passphrase_env: Annotated[
        str,
        typer.Option("--ca-passphrase-env", help="Encrypt the CA key with the passphrase in this env var."),
    ] = "",
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The registry database, e.g. postgresql://thingward@db.example/thingward (an empty database; "
            "a password is best left to PGPASSWORD or ~/.pgpass). Written to thingward.toml. "
            "[default: $THINGWARD_DATABASE_URL, else SQLite in the data dir]",
            show_default=False,
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a data dir: own CA, server certificate, database, config, default group and policy."""
    result = init_data_dir(data_dir, tuple(hostname or ()), ca_passphrase_env, database_url)
    emit(as_json, {"data_dir": str(result.data_dir), "ca_certificate": str(result.ca_certificate)})


async def _serve(
    data_dir: Path | None,
    host: str | None,
    mqtt_port: int | None,
    http_port: int | None,
    as_json: bool,
    broker: str | None = None,
    device_port: int | None = None,
) -> None:
    from thingward.server import ThingwardServer

    platform = open_platform(data_dir)
    settings = platform.settings
    server = ThingwardServer(
        platform,
        host or settings.server.host,
        settings.mqtt.port if mqtt_port is None else mqtt_port,
        settings.server.http_port if http_port is None else http_port,
        broker=broker,
        device_port=device_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    endpoints = await server.start()
    try:
        if as_json:
            sys.stdout.write(json.dumps(endpoints.to_dict()) + "\n")
            sys.stdout.flush()
        else:
            console.print(
                f"MQTT over mTLS: {endpoints.mqtt}\n"
                f"HTTPS API:      {endpoints.api}\n"
                f"Device uploads: {endpoints.device_api} (device certificate required)\n"
                f"CA:             {endpoints.ca_certificate}"
            )
        await stop.wait()
    finally:
        await server.stop()
        platform.close()


@app.command("serve")
@handle_errors
def serve(
    data_dir: DataDir = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on [default: from config, 127.0.0.1].")
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option("--mqtt-port", help="MQTTS port; 0 picks a free one [default: 8883].")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="HTTPS port; 0 picks a free one [default: 8443].")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker", help="The MQTT data plane: embedded, or a managed mosquitto [default: from config, embedded]."
        ),
    ] = None,
    device_port: Annotated[
        int | None,
        typer.Option(
            "--device-port",
            help="Device upload port (HTTPS, device certificate required); 0 picks a free one "
            "[default: 8444, or a free one with --http-port 0].",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the broker (MQTT over mutual TLS only), the HTTPS API and the device listener until interrupted."""
    if broker is not None and broker not in BROKERS:
        raise ConfigError(f"--broker {broker!r}: use one of {', '.join(BROKERS)}")
    asyncio.run(_serve(data_dir, host, mqtt_port, http_port, as_json, broker, device_port))


@app.command("simulate")
@handle_errors
def simulate(
    devices: Annotated[int, typer.Option("--devices", min=1, max=1000, help="How many cameras.")] = 2,
    api: Annotated[str, typer.Option("--api", help="URL of the running server's API.")] = "https://127.0.0.1:8443",
    mqtt: Annotated[str, typer.Option("--mqtt", help="URL of the running broker.")] = "mqtts://127.0.0.1:8883",
    duration: Annotated[float, typer.Option("--duration", help="Stop after this many seconds (0: until Ctrl-C).")] = 0,
    prefix: Annotated[str, typer.Option("--prefix", help="Name prefix of the cameras.")] = "sim-cam",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Enroll N simulated cameras against a running server and let them publish telemetry and motion."""
    from thingward.cli.demo import run_simulation

    stats = run_simulation(open_platform(data_dir), api, mqtt, devices, duration, prefix, live=not as_json)
    emit(as_json, stats)


@app.command("demo")
@handle_errors
def demo(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Demo data dir (created if missing).")] = Path(
        "thingward-demo"
    ),
    duration: Annotated[float, typer.Option("--duration", help="Stop after this many seconds (0: until Ctrl-C).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The whole journey on a laptop: CA, broker, API, two cameras, and a refused cross-device read."""
    from thingward.cli.demo import run_demo

    summary = asyncio.run(run_demo(data_dir, duration, live=not as_json))

    def human() -> None:
        for camera, stats in summary["cameras"].items():
            console.print(
                f"{camera}: sent {stats['telemetry_sent']} telemetry and {stats['events_sent']} events, "
                f"stored {stats['stored']}"
            )
        audit = summary["audit"]
        counts = ", ".join(f"{n} {severity}" for severity, n in audit["findings"].items() if n) or "no findings"
        console.print(f"\n[bold]Fleet audit[/bold]: {counts} (thingward audit --data-dir {data_dir} for all)")
        for finding in audit["top"]:
            console.print(
                f"  {finding['severity']:<8} {finding['check']:<24} {finding['resource']}: {finding['message']}",
                markup=False,
                highlight=False,
            )

    emit(as_json, summary, human)


db_app = typer.Typer(help="The registry database: its schema version and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("status")
@handle_errors
def db_status(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Show the registry schema's revision and the one this thingward needs."""
    from thingward.registry.db import display_url, head_revision, schema_revision

    platform = open_platform(data_dir, check_schema_version=False)
    current, head = schema_revision(platform.db.engine), head_revision()
    emit(
        as_json,
        {
            "database": display_url(platform.settings.database_url),
            "revision": current,
            "head": head,
            "current": current == head,
        },
    )


@db_app.command("upgrade")
@handle_errors
def db_upgrade(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Migrate the registry to this thingward's schema (back up the data dir first). Safe to run again."""
    platform = open_platform(data_dir, check_schema_version=False)
    before, after = platform.upgrade_schema()
    emit(as_json, {"from": before, "to": after, "changed": before != after})


log_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(log_app, name="log")


@log_app.command("list")
@handle_errors
def log_list(
    limit: Annotated[int, typer.Option(min=1, max=100000)] = 50,
    target: Annotated[str | None, typer.Option(help="Only events about this target, e.g. thing:cam1.")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the newest audit events."""
    from rich.table import Table

    from thingward.registry.audit_log import event_to_dict, list_events

    with open_platform(data_dir).db.read() as session:
        rows = [event_to_dict(e) for e in list_events(session, limit, target)]

    def human() -> None:
        table = Table("id", "at", "actor", "source", "action", "target")
        for r in rows:
            table.add_row(str(r["id"]), r["at"], r["actor"], r["source"], r["action"], r["target"])
        console.print(table)

    emit(as_json, {"events": rows}, human)


@log_app.command("verify")
@handle_errors
def log_verify(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Check the hash chain of the audit log; exit 1 if any event was altered or removed."""
    from thingward.registry.audit_log import verify_audit_chain

    with open_platform(data_dir).db.read() as session:
        broken = verify_audit_chain(session)
    emit(as_json, {"intact": broken is None, "first_bad_event": broken})
    if broken is not None:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        app()
