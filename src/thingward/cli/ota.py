"""`thingward ota ...`: over-the-air updates. Today: firmware advisories (`thingward ota advisory ...`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.platform import cli_actor
from thingward.registry import device_state

app = typer.Typer(help="Over-the-air updates: firmware, advisories, rollouts.", no_args_is_help=True)
advisory_app = typer.Typer(help="Firmware advisories: which versions of a model are weak.", no_args_is_help=True)
app.add_typer(advisory_app, name="advisory")


@advisory_app.command("add")
@handle_errors
def add_advisory(
    advisory_id: Annotated[str, typer.Option("--id", help="The advisory's id, e.g. CVE-2026-1234.")],
    model: Annotated[str, typer.Option("--model", help="The device model it concerns.")],
    affected: Annotated[
        str, typer.Option("--affected", help="Affected versions as a range, e.g. '<1.4.2' or '>=1.0,<1.4.2'.")
    ],
    severity: Annotated[str, typer.Option(help="critical, high, medium or low.")] = "high",
    summary: Annotated[str, typer.Option(help="One line on the weakness.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Register a firmware advisory; the audit flags every device reporting an affected version."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        advisory = device_state.add_advisory(session, cli_actor(), advisory_id, model, affected, severity, summary)
    emit(as_json, advisory.to_dict())


@advisory_app.command("list")
@handle_errors
def list_advisories(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List firmware advisories."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisories = device_state.list_advisories(session)

    def human() -> None:
        table = Table("id", "model", "affected", "severity", "summary")
        for a in advisories:
            table.add_row(a.advisory_id, a.model, a.affected, a.severity, a.summary)
        console.print(table)

    emit(as_json, {"advisories": [a.to_dict() for a in advisories]}, human)


@advisory_app.command("remove")
@handle_errors
def remove_advisory(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Remove a firmware advisory (for one registered in error; a fixed fleet clears its findings by itself)."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        device_state.remove_advisory(session, cli_actor(), advisory_id)
    emit(as_json, {"removed": advisory_id})


@advisory_app.command("devices")
@handle_errors
def devices(advisory_id: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List the devices whose latest report names an affected firmware version."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        advisory = device_state.get_advisory(session, advisory_id)
        affected = device_state.affected_devices(advisory, device_state.latest_reports(session))

    def human() -> None:
        table = Table("thing", "model", "version", title=f"{advisory_id}: affected {advisory.affected}")
        for d in affected:
            table.add_row(d.thing, d.model, d.version)
        console.print(table)

    emit(as_json, {"advisory": advisory.to_dict(), "devices": [d.to_dict() for d in affected]}, human)
