"""`thingward group ...`: thing groups, their members and the policies attached to them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.platform import cli_actor
from thingward.registry import policies, things
from thingward.registry.models import PolicyAttachment

app = typer.Typer(help="Thing groups: where policies live.", no_args_is_help=True)


@app.command("add")
@handle_errors
def add(
    name: str,
    parent: Annotated[str | None, typer.Option("--parent", help="Parent group (policies are inherited).")] = None,
    description: Annotated[str, typer.Option(help="What the group is for.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a thing group, optionally under a parent (at most 7 levels deep)."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        things.add_group(session, cli_actor(), name, parent, description)
    emit(as_json, {"name": name, "parent": parent})


@app.command("set-parent")
@handle_errors
def set_parent(
    name: str,
    parent: Annotated[str | None, typer.Argument(help="New parent; omit to make it a root group.")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Move a group under another parent (cycles and depth over 7 are refused)."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        things.set_group_parent(session, cli_actor(), name, parent)
    emit(as_json, {"name": name, "parent": parent})


@app.command("add-thing")
@handle_errors
def add_thing(group: str, thing: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Put a thing into a group."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        things.add_to_group(session, cli_actor(), thing, group)
    emit(as_json, {"group": group, "thing": thing})


@app.command("remove-thing")
@handle_errors
def remove_thing(group: str, thing: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Take a thing out of a group."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        things.remove_from_group(session, cli_actor(), thing, group)
    emit(as_json, {"group": group, "thing": thing, "removed": True})


@app.command("attach-policy")
@handle_errors
def attach_policy(group: str, policy: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Attach a policy to a group: its members and subgroups' members inherit it."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policies.attach_policy(session, cli_actor(), policy, group=group)
    emit(as_json, {"group": group, "policy": policy, "attached": True})


@app.command("detach-policy")
@handle_errors
def detach_policy(group: str, policy: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Detach a policy from a group."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policies.detach_policy(session, cli_actor(), policy, group=group)
    emit(as_json, {"group": group, "policy": policy, "attached": False})


@app.command("list")
@handle_errors
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List groups with their parent, member count and attached policies."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        attached: dict[int, list[str]] = {}
        for attachment in session.query(PolicyAttachment).filter(PolicyAttachment.group_id.is_not(None)):
            attached.setdefault(attachment.group_id or 0, []).append(attachment.policy.name)
        rows: list[dict[str, Any]] = [
            {
                "name": g.name,
                "parent": g.parent.name if g.parent else None,
                "things": len(g.things),
                "policies": sorted(attached.get(g.id, [])),
                "description": g.description,
            }
            for g in things.list_groups(session)
        ]

    def human() -> None:
        table = Table("name", "parent", "things", "policies")
        for r in rows:
            table.add_row(r["name"], r["parent"] or "-", str(r["things"]), ", ".join(r["policies"]) or "-")
        console.print(table)

    emit(as_json, {"groups": rows}, human)
