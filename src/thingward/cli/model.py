"""`thingward model ...`: device models and the ports their devices may listen on."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.platform import cli_actor
from thingward.registry import device_state

app = typer.Typer(help="Device models: the ports their devices may listen on.", no_args_is_help=True)


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
