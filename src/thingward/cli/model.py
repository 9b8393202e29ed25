"""`thingward model ...` and `thingward advisory ...`: what each device model may expose, and which firmware is weak."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError, NotFoundError
from thingward.platform import cli_actor
from thingward.registry import device_state

app = typer.Typer(help="Device models: the ports their devices may listen on.", no_args_is_help=True)
advisory_app = typer.Typer(help="Firmware advisories: which versions of a model are weak.", no_args_is_help=True)


def _port_list(text: str, option: str) -> list[int]:
    if not text.strip():
        return []
    ports = []
    for part in text.split(","):
        try:
            ports.append(int(part))
        except ValueError:
            raise InvalidInputError(
                f"{option}: {part.strip()!r} is not a port number (e.g. {option} 443,8883)"
            ) from None
    return ports


@app.command("set")
@handle_errors
def set_model(
    name: str,
    tcp: Annotated[str, typer.Option("--tcp", help="Comma-separated TCP ports devices may listen on.")] = "",
    udp: Annotated[str, typer.Option("--udp", help="Comma-separated UDP ports devices may listen on.")] = "",
    description: Annotated[str, typer.Option(help="What the model is.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create or replace a model's allowed-port list; the audit flags every other port a device reports.

    Telnet (23, 2323) is flagged whatever the list says.
    """
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        profile = device_state.set_model(
            session, cli_actor(), name, _port_list(tcp, "--tcp"), _port_list(udp, "--udp"), description
        )
    emit(as_json, profile.to_dict())


@app.command("list")
@handle_errors
def list_models(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List device models and their allowed ports."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        models = device_state.list_models(session)

    def human() -> None:
        table = Table("model", "allowed TCP", "allowed UDP", "description")
        for m in models:
            table.add_row(
                m.name,
                ", ".join(map(str, m.allowed_tcp_ports)),
                ", ".join(map(str, m.allowed_udp_ports)),
                m.description,
            )
        console.print(table)

    emit(as_json, {"models": [m.to_dict() for m in models]}, human)


@app.command("show")
@handle_errors
def show_model(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Show one device model."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        profile = device_state.get_model(session, name)
    emit(as_json, profile.to_dict())


@advisory_app.command("add")
@handle_errors
def add_advisory(
    advisory_id: Annotated[str, typer.Argument(help="The advisory's id, e.g. CVE-2026-1234.")],
    model: Annotated[str, typer.Option("--model", help="The device model it concerns.")],
    fixed_in: Annotated[str, typer.Option("--fixed-in", help="First fixed version; every older one is affected.")],
    severity: Annotated[str, typer.Option(help="critical, high, medium or low.")] = "high",
    summary: Annotated[str, typer.Option(help="One line on the weakness.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a firmware advisory; the audit flags every device reporting an affected version."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        advisory = device_state.add_advisory(session, cli_actor(), advisory_id, model, fixed_in, severity, summary)
    emit(as_json, advisory.to_dict())


@advisory_app.command("list")
@handle_errors
def list_advisories(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List firmware advisories."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisories = device_state.list_advisories(session)

    def human() -> None:
        table = Table("id", "model", "fixed in", "severity", "summary")
        for a in advisories:
            table.add_row(a.advisory_id, a.model, a.fixed_in, a.severity, a.summary)
        console.print(table)

    emit(as_json, {"advisories": [a.to_dict() for a in advisories]}, human)


@advisory_app.command("remove")
@handle_errors
def remove_advisory(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Remove a firmware advisory."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        device_state.remove_advisory(session, cli_actor(), advisory_id)
    emit(as_json, {"removed": advisory_id})


@advisory_app.command("affected")
@handle_errors
def affected(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List the devices whose latest report names an affected firmware version."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisory = next((a for a in device_state.list_advisories(session) if a.advisory_id == advisory_id), None)
        if advisory is None:
            raise NotFoundError(f"no advisory {advisory_id!r}: see 'thingward advisory list'")
        devices = device_state.affected_devices(advisory, device_state.latest_reports(session))

    def human() -> None:
        table = Table("thing", "model", "version", title=f"{advisory_id}: fixed in {advisory.fixed_in}")
        for d in devices:
            table.add_row(d.thing, d.model, d.version)
        console.print(table)

    emit(as_json, {"advisory": advisory.to_dict(), "devices": [d.to_dict() for d in devices]}, human)
