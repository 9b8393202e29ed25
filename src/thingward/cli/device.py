"""`thingward device ...`: add, enroll, list, show, revoke, disable and read messages of devices."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.device.enroll import enroll as enroll_device
from thingward.errors import InvalidInputError
from thingward.ingest.store import recent_messages
from thingward.platform import cli_actor
from thingward.registry import certificates, device_state, things

app = typer.Typer(help="Devices (things): add, enroll, revoke, inspect.", no_args_is_help=True)


def _parse_attributes(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInputError(f"attribute {pair!r} is not KEY=VALUE")
        result[key] = value
    return result


@app.command("add")
@handle_errors
def add(
    name: str,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Thing group (repeatable) [default: default].")
    ] = None,
    attribute: Annotated[list[str] | None, typer.Option("--attr", help="Attribute KEY=VALUE (repeatable).")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a device and print its one-time enrollment token (shown once, stored only as a hash)."""
    platform = open_platform(data_dir)
    actor = cli_actor()
    ttl = dt.timedelta(seconds=platform.settings.pki.enrollment_token_ttl_seconds)
    with platform.db.session() as session:
        things.add_thing(session, actor, name, group or [], _parse_attributes(attribute or []))
        issued = things.create_enrollment_token(session, actor, name, ttl)
    emit(
        as_json,
        {"name": issued.thing, "enrollment_token": issued.token, "expires_at": issued.expires_at.isoformat()},
    )


@app.command("token")
@handle_errors
def token(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Issue a new one-time enrollment token for an existing device (to re-enroll or rotate its key)."""
    platform = open_platform(data_dir)
    ttl = dt.timedelta(seconds=platform.settings.pki.enrollment_token_ttl_seconds)
    with platform.db.session() as session:
        issued = things.create_enrollment_token(session, cli_actor(), name, ttl)
    emit(
        as_json,
        {"name": issued.thing, "enrollment_token": issued.token, "expires_at": issued.expires_at.isoformat()},
    )


def _enrollment_token(given: str | None, env_name: str | None) -> str:
    if (given is None) == (env_name is None):
        raise InvalidInputError("give the enrollment token with exactly one of --token or --token-env")
    if given is not None:
        return given
    value = os.environ.get(env_name or "", "")
    if not value:
        raise InvalidInputError(f"${env_name} is not set or empty: it should hold the enrollment token")
    return value


@app.command("enroll")
@handle_errors
def enroll(
    api: Annotated[str, typer.Option("--api", help="URL of the thingward API, e.g. https://127.0.0.1:8443")],
    ca_certificate: Annotated[Path, typer.Option("--ca-certificate", help="The platform CA certificate (PEM).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for device.key, device.crt and ca.crt.")],
    token_value: Annotated[
        str | None, typer.Option("--token", help="The one-time enrollment token (visible in the process list).")
    ] = None,
    token_env: Annotated[
        str | None, typer.Option("--token-env", help="Read the token from this environment variable instead.")
    ] = None,
    pkcs11_uri: Annotated[str | None, typer.Option("--pkcs11-uri", help="Keep the key in a PKCS#11 token.")] = None,
    pkcs11_pin_env: Annotated[
        str, typer.Option("--pkcs11-pin-env", help="Env var holding the token PIN.")
    ] = "THINGWARD_PKCS11_PIN",
    as_json: JsonFlag = False,
) -> None:
    """Device side: make a key, send a CSR over verified HTTPS, and store the issued certificate."""
    token = _enrollment_token(token_value, token_env)
    key_store = None
    if pkcs11_uri:
        from thingward.pki.pkcs11_store import Pkcs11KeyStore

        pin = os.environ.get(pkcs11_pin_env, "")
        if not pin:
            raise InvalidInputError(f"set ${pkcs11_pin_env} to the PKCS#11 token PIN")
        key_store = Pkcs11KeyStore.from_uri(pkcs11_uri, pin)
    identity = enroll_device(api, token, ca_certificate, out, key_store=key_store)
    emit(
        as_json,
        {
            "name": identity.name,
            "certificate": str(identity.certificate),
            "key": str(identity.key) if identity.key else pkcs11_uri,
        },
    )


def _mqtt_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.removeprefix("mqtts://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidInputError(f"--mqtt {text!r}: give HOST:PORT of the broker's TLS listener, e.g. 127.0.0.1:8883")
    return host.strip("[]"), int(port)


@app.command("report")
@handle_errors
def report(
    directory: Annotated[Path, typer.Option("--dir", help="The enrolled device's directory (device.crt, ...).")],
    mqtt_endpoint: Annotated[str, typer.Option("--mqtt", help="HOST:PORT of the broker's TLS listener.")],
    model: Annotated[str, typer.Option("--model", help="The device's model.")],
    firmware_version: Annotated[str, typer.Option("--firmware-version", help="The firmware version it runs.")],
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many reports to send.")] = 1,
    interval: Annotated[float, typer.Option(min=1.0, help="Seconds between reports.")] = 300.0,
    as_json: JsonFlag = False,
) -> None:
    """Device side: report firmware and this host's listening ports (not loopback-only ones) to the platform."""
    import time

    from cryptography import x509

    from thingward.device.client import Device
    from thingward.device.enroll import CERT_FILE
    from thingward.device.state import DeviceState, listening_ports
    from thingward.pki.ca import thing_name_from_certificate

    cert_file = directory / CERT_FILE
    try:
        name = thing_name_from_certificate(x509.load_pem_x509_certificate(cert_file.read_bytes()))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read the device certificate {cert_file}: {e}; enroll first") from None
    if name is None:
        raise InvalidInputError(f"{cert_file} names no thing: it is not a thingward device certificate")
    host, port = _mqtt_endpoint(mqtt_endpoint)
    device = Device.from_dir(directory, name, host=host, port=port)
    device.connect()
    sent = []
    try:
        for i in range(count):
            state = DeviceState(model=model, firmware_version=firmware_version, ports=listening_ports())
            device.publish_state(state).wait_for_publish(10)
            sent.append({"tcp": list(state.ports.tcp), "udp": list(state.ports.udp)})
            if i + 1 < count:
                time.sleep(interval)
    finally:
        device.close()
    emit(as_json, {"name": name, "reports": len(sent), "ports": sent[-1]})


@app.command("agent")
@handle_errors
def agent(
    directory: Annotated[Path, typer.Option("--dir", help="The enrolled device's directory (device.crt, ...).")],
    mqtt_endpoint: Annotated[str, typer.Option("--mqtt", help="HOST:PORT of the broker's TLS listener.")],
    api: Annotated[str, typer.Option("--api", help="URL of the thingward API (TUF metadata and images).")],
    model: Annotated[str, typer.Option("--model", help="The device's model.")],
    ota_dir: Annotated[
        Path | None, typer.Option("--ota-dir", help="A/B slots, TUF metadata, job journal [default: DIR/ota].")
    ] = None,
    trusted_root: Annotated[
        Path | None, typer.Option("--trusted-root", help="First start only: the OTA root.json to trust.")
    ] = None,
    factory_image: Annotated[
        Path | None, typer.Option("--factory-image", help="First start only: the image in slot A.")
    ] = None,
    factory_version: Annotated[
        str | None, typer.Option("--factory-version", help="First start only: that image's version.")
    ] = None,
    duration: Annotated[float, typer.Option("--duration", help="Stop after this many seconds (0: until Ctrl-C).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Device side: the OTA job agent. Hears its jobs, installs them to the inactive slot, reboots into them
    once (a restart of the agent), confirms or rolls back by itself, and reports every state."""
    import threading

    from cryptography import x509

    from thingward.device.enroll import CA_FILE, CERT_FILE
    from thingward.device.jobs import JobAgent
    from thingward.device.update import SLOTS_DIR, STATE_FILE, FirmwareUpdater
    from thingward.pki.ca import thing_name_from_certificate

    cert_file = directory / CERT_FILE
    try:
        name = thing_name_from_certificate(x509.load_pem_x509_certificate(cert_file.read_bytes()))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"cannot read the device certificate {cert_file}: {e}; enroll first") from None
    if name is None:
        raise InvalidInputError(f"{cert_file} names no thing: it is not a thingward device certificate")
    host, port = _mqtt_endpoint(mqtt_endpoint)
    ota = ota_dir or directory / "ota"
    if (ota / SLOTS_DIR / STATE_FILE).exists():
        updater = FirmwareUpdater(ota, api, directory / CA_FILE, model)
    elif trusted_root and factory_image and factory_version:
        updater = FirmwareUpdater.provision(
            ota, trusted_root.read_bytes(), factory_image.read_bytes(), factory_version, api, directory / CA_FILE, model
        )
    else:
        raise InvalidInputError(
            f"{ota} holds no A/B slots yet: give --trusted-root, --factory-image and --factory-version once"
        )
    job_agent = JobAgent(name, directory, updater, host, port)
    stop = threading.Event()
    job_agent.start()
    try:
        stop.wait(duration if duration > 0 else None)
    except KeyboardInterrupt:
        pass
    finally:
        job_agent.stop()
    emit(
        as_json,
        {
            "name": name,
            "running_version": updater.running_version,
            "restarts": job_agent.stats.restarts,
            "reports": len(job_agent.stats.reports),
        },
    )


@app.command("revoke")
@handle_errors
def revoke(
    name: str,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "unspecified",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke every certificate of a device; a running server drops its live sessions within a second."""
    platform = open_platform(data_dir)
    serials = platform.revoke(cli_actor(), name, reason)
    emit(as_json, {"name": name, "revoked_serials": serials, "crl": str(platform.crl_path)})


@app.command("disable")
@handle_errors
def disable(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Disable a device: revoke its certificates, void its tokens, deny it everything."""
    platform = open_platform(data_dir)
    serials = platform.set_disabled(cli_actor(), name, True)
    emit(as_json, {"name": name, "disabled": True, "revoked_serials": serials})


@app.command("enable")
@handle_errors
def enable(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Enable a disabled device again (it needs a new token and enrollment to get a certificate)."""
    platform = open_platform(data_dir)
    platform.set_disabled(cli_actor(), name, False)
    emit(as_json, {"name": name, "disabled": False})


@app.command("list")
@handle_errors
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List devices with their groups, status and last message time."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": t.name,
                "groups": sorted(g.name for g in t.groups),
                "disabled": t.disabled,
                "last_seen_at": t.last_seen_at.isoformat() if t.last_seen_at else None,
                "attributes": {a.key: a.value for a in t.attributes},
            }
            for t in things.list_things(session)
        ]

    def human() -> None:
        table = Table("name", "groups", "status", "last seen")
        for r in rows:
            table.add_row(
                r["name"],
                ", ".join(r["groups"]),
                "disabled" if r["disabled"] else "enabled",
                r["last_seen_at"] or "-",
            )
        console.print(table)

    emit(as_json, {"things": rows}, human)


@app.command("show")
@handle_errors
def show(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Show one device: groups, attributes and certificates."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        thing = things.get_thing(session, name)
        data = {
            "name": thing.name,
            "disabled": thing.disabled,
            "groups": sorted(g.name for g in thing.groups),
            "attributes": {a.key: a.value for a in thing.attributes},
            "last_seen_at": thing.last_seen_at.isoformat() if thing.last_seen_at else None,
            "certificates": [
                {
                    "serial": c.serial,
                    "fingerprint_sha256": c.fingerprint_sha256,
                    "status": c.status,
                    "not_after": c.not_after.isoformat(),
                    "key_type": c.key_type,
                }
                for c in certificates.list_certificates(session, thing)
            ],
        }
        latest = device_state.latest_report(session, name)
        data["reported_state"] = (
            {"received_at": latest.received_at.isoformat(), **latest.report.to_dict()} if latest else None
        )
    emit(as_json, data)


@app.command("set-attr")
@handle_errors
def set_attr(name: str, key: str, value: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Set an attribute of a device (usable in policies as ${thing.attr.KEY})."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        things.set_attribute(session, cli_actor(), name, key, value)
    emit(as_json, {"name": name, "attribute": key, "value": value})


@app.command("messages")
@handle_errors
def messages(
    name: str,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="How many, newest first.")] = 20,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the newest stored telemetry and events of a device."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        thing = things.get_thing(session, name)
        rows: list[dict[str, Any]] = [
            {
                "received_at": m.received_at.isoformat(),
                "topic": m.topic,
                "kind": m.kind,
                "event_type": m.event_type,
                "payload": m.payload.decode("utf-8", errors="replace"),
            }
            for m in recent_messages(session, thing, limit)
        ]

    def human() -> None:
        table = Table("received", "topic", "payload")
        for r in rows:
            table.add_row(r["received_at"], r["topic"], r["payload"][:80])
        console.print(table)

    emit(as_json, {"name": name, "messages": rows}, human)
