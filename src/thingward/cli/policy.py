"""`thingward policy ...`: add and inspect policies; explain a decision; who can do what; lint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.platform import cli_actor
from thingward.policy.engine import PolicyEngine
from thingward.policy.lint import lint_world
from thingward.registry import policies

app = typer.Typer(help="Policies: least privilege for every device.", no_args_is_help=True)

ACTIONS = ("connect", "publish", "subscribe", "receive")


def _read(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as e:
        raise InvalidInputError(f"cannot read policy file {file}: {e.strerror}") from e


def _check_action(action: str) -> str:
    if action not in ACTIONS:
        raise InvalidInputError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    return action


@app.command("add")
@handle_errors
def add(name: str, file: Path, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Add a policy from a JSON file (checked before anything is stored)."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policy = policies.add_policy(session, cli_actor(), name, _read(file))
    emit(as_json, {"name": name, "version": policy.version})


@app.command("update")
@handle_errors
def update(name: str, file: Path, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Replace a policy's document; a running server applies it to live sessions at once."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policy = policies.update_policy(session, cli_actor(), name, _read(file))
    emit(as_json, {"name": name, "version": policy.version})


def _one_target(group: str | None, thing: str | None) -> tuple[str | None, str | None]:
    if (group is None) == (thing is None):
        raise InvalidInputError("name exactly one of --group or --thing")
    return group, thing


@app.command("attach")
@handle_errors
def attach(
    name: str,
    group: Annotated[str | None, typer.Option("--group", help="Attach to this group (the normal way).")] = None,
    thing: Annotated[
        str | None, typer.Option("--thing", help="Attach to a single thing (possible; 'policy lint' reports it).")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Attach a policy to a group, or (discouraged) to a single thing."""
    group, thing = _one_target(group, thing)
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policies.attach_policy(session, cli_actor(), name, group=group, thing=thing)
    emit(as_json, {"policy": name, "group": group, "thing": thing, "attached": True})


@app.command("detach")
@handle_errors
def detach(
    name: str,
    group: Annotated[str | None, typer.Option("--group", help="Detach from this group.")] = None,
    thing: Annotated[str | None, typer.Option("--thing", help="Detach from this thing.")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Detach a policy from a group or a thing."""
    group, thing = _one_target(group, thing)
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        policies.detach_policy(session, cli_actor(), name, group=group, thing=thing)
    emit(as_json, {"policy": name, "group": group, "thing": thing, "attached": False})


@app.command("list")
@handle_errors
def list_(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List policies."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        rows: list[dict[str, Any]] = [
            {"name": p.name, "version": p.version, "updated_at": p.updated_at.isoformat()}
            for p in policies.list_policies(session)
        ]

    def human() -> None:
        table = Table("name", "version", "updated")
        for r in rows:
            table.add_row(r["name"], str(r["version"]), r["updated_at"])
        console.print(table)

    emit(as_json, {"policies": rows}, human)


@app.command("show")
@handle_errors
def show(name: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Print a policy document."""
    import json

    platform = open_platform(data_dir)
    with platform.db.read() as session:
        policy = policies.get_policy(session, name)
        data = {"name": policy.name, "version": policy.version, "document": json.loads(policy.document)}
    emit(as_json, data, lambda: console.print_json(data=data["document"]))


def _engine(data_dir: Path | None) -> PolicyEngine:
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        return PolicyEngine(policies.load_policy_world(session))


@app.command("explain")
@handle_errors
def explain(
    thing: str,
    action: str,
    topic: Annotated[str, typer.Argument(help="Topic (publish/receive), filter (subscribe) or client id (connect).")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Say whether THING may do ACTION on TOPIC, and which statements of which group decided it."""
    result = _engine(data_dir).explain(thing, _check_action(action), topic).to_dict()

    def human() -> None:
        colour = "green" if result["decision"] == "allow" else "red"
        console.print(f"[bold {colour}]{result['decision'].upper()}[/]: {result.get('reason', '')}")
        for st in result["statements"]:
            console.print(
                f"  {st['effect']:5} {st['resolved']!s:40} policy {st['policy']} "
                f"({st.get('sid')}) attached to {st['attached_to']}"
            )

    emit(as_json, result, human)


@app.command("who-can")
@handle_errors
def who_can(action: str, topic: str, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List every thing and group that may do ACTION on TOPIC (the ACL report)."""
    result = _engine(data_dir).who_can(_check_action(action), topic).to_dict()

    def human() -> None:
        if result.get("problem"):
            console.print(f"[red]{result['problem']}[/]")
        console.print(f"{result['count']} thing(s) may {action} {topic}")
        table = Table("thing", "granted by")
        for entry in result["things"]:
            grants = "; ".join(f"{g['policy']}#{g['sid']} @ {g['attached_to']}" for g in entry["statements"])
            table.add_row(entry["thing"], grants)
        console.print(table)
        if result["groups"]:
            console.print("through groups: " + ", ".join(result["groups"]))

    emit(as_json, result, human)


@app.command("lint")
@handle_errors
def lint(
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when there is any finding.")] = False,
) -> None:
    """Report risky policies: attached to single things, overly broad topics, useless denies."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        findings = lint_world(policies.load_policy_world(session))
    rows: list[dict[str, Any]] = [
        {
            "code": f.code,
            "severity": f.severity,
            "message": f.message,
            "policy": f.policy,
            "target": f.target,
            "remediation": f.remediation,
        }
        for f in findings
    ]

    def human() -> None:
        if not rows:
            console.print("[green]no findings[/]")
            return
        table = Table("severity", "code", "policy", "target", "message")
        for r in rows:
            table.add_row(r["severity"], r["code"], r["policy"] or "-", r["target"] or "-", r["message"])
        console.print(table)

    emit(as_json, {"findings": rows}, human)
    if strict and rows:
        raise typer.Exit(1)
