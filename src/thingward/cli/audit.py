"""`thingward audit`: every check over the registry, policies, certificates and config, ranked by severity;
and the nouns around it: suppressions, stored history, mitigation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from thingward.audit.html import render_html
from thingward.audit.mitigate import mitigate, parse_action, undo_mitigation
from thingward.audit.model import FINDING_ID_LENGTH, SEVERITIES, SEVERITY_COLOURS, parse_severity
from thingward.audit.report import fails_gate
from thingward.audit.sarif import to_sarif
from thingward.audit.scanner.load import load_scan_report
from thingward.audit.service import AuditOutcome, resolve_finding, run_audit
from thingward.audit.suppress import MAX_SUPPRESSION
from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.pki.files import write_atomic
from thingward.platform import cli_actor
from thingward.registry.audit_records import add_suppression, list_runs, list_suppressions, remove_suppression

app = typer.Typer(help="Fleet security audit.", invoke_without_command=True)

_DURATION = re.compile(r"(\d{1,4})([hdw])")
_CHECK_ID = re.compile(r"[A-Z][A-Z0-9_]{2,63}")
_FINDING_ID = re.compile(rf"[0-9a-f]{{{FINDING_ID_LENGTH}}}")


def _print_report(outcome: AuditOutcome) -> None:
    report = outcome.report
    table = Table("severity")
    table.add_column("check", no_wrap=True)
    table.add_column("status")
    table.add_column("id", no_wrap=True)
    table.add_column("resource")
    table.add_column("finding")
    new = {f["id"] for f in outcome.changes["new"]} if outcome.changes else set()
    for check in report["checks"]:
        colour = SEVERITY_COLOURS[check["severity"]]
        if check["status"] != "fail":
            table.add_row(
                f"[{colour}]{check['severity']}[/]", check["id"], check["status"], "-", "-", check["note"] or "-"
            )
            continue
        for finding in check["findings"]:
            table.add_row(
                f"[{SEVERITY_COLOURS[finding['severity']]}]{finding['severity']}[/]",
                check["id"],
                "[red]fail[/]" + (" [bold]new[/]" if finding["id"] in new else ""),
                finding["id"],
                finding["resource"],
                finding["message"],
            )
    console.print(table)
    counts = report["summary"]["findings"]
    console.print("findings: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES))
    if report["suppressed"]:
        suppressed = Table("id", "check", "resource", "severity", "reason", "until", title="suppressed")
        for taken in report["suppressed"]:
            s = taken["suppression"]
            suppressed.add_row(
                taken["id"], taken["check"], taken["resource"], taken["severity"], s["reason"], s["expires_at"][:10]
            )
        console.print(suppressed)
    for lapsed in report["expired_suppressions"]:
        console.print(
            f"[yellow]suppression {lapsed['id']} ({lapsed['check']} {lapsed['resource'] or '(all)'}) expired on "
            f"{lapsed['expires_at'][:10]}: its findings count again[/] (thingward audit unsuppress {lapsed['id']})"
        )
    if outcome.changes is not None:
        changes = outcome.changes
        console.print(
            f"since run {changes['previous_run']['id']} ({changes['previous_run']['at'][:19]}): "
            f"{len(changes['new'])} new, {len(changes['resolved'])} resolved"
        )
        for gone in changes["resolved"]:
            console.print(f"  [green]resolved[/] {gone['id']} {gone['check']} {gone['resource']}")
    if outcome.saved is not None:
        console.print(f"stored as run {outcome.saved.id}")


@app.callback()
@handle_errors
def audit(
    ctx: typer.Context,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", help="Exit 1 if a finding at or above this severity exists (CI gate).")
    ] = None,
    expiry_days: Annotated[int, typer.Option("--expiry-days", min=1, help="Certificates expiring within N days.")] = 30,
    stale_days: Annotated[int, typer.Option("--stale-days", min=1, help="Devices not seen for N days.")] = 30,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")] = None,
    sarif: Annotated[
        str | None, typer.Option("--sarif", help="Also write a SARIF 2.1.0 report to this file ('-': stdout only).")
    ] = None,
    save: Annotated[bool, typer.Option("--save", help="Store this run in the history ('audit history').")] = False,
    scan_report: Annotated[
        Path | None,
        typer.Option("--scan-report", help="Judge a saved LAN scan too ('thingward scan ... --json > FILE')."),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Run every check; print findings with severity, remediation and the standard's clause.

    Suppressed findings are listed apart and do not count for --fail-on. When a run was stored before
    (--save, or the server's schedule), the report says which findings are new and which were resolved.
    """
    if ctx.invoked_subcommand is not None:
        return
    gate = parse_severity(fail_on)
    if sarif == "-" and as_json:
        raise InvalidInputError("--sarif - and --json both want stdout: write the SARIF to a file instead")
    scan = None
    if scan_report is not None:
        try:
            scan = load_scan_report(scan_report.read_bytes())
        except OSError as e:
            raise InvalidInputError(f"cannot read the scan report {scan_report}: {e.strerror}") from None
    platform = open_platform(data_dir)
    quiet = as_json or sarif == "-"
    with contextlib.nullcontext() if quiet else console.status("auditing the fleet ..."):
        outcome = run_audit(
            platform, expiry_days=expiry_days, stale_days=stale_days, scan=scan, save=save, triggered_by=_who()
        )
    if html is not None:
        write_atomic(html, render_html(outcome.report).encode())
    if sarif is not None:
        document = json.dumps(to_sarif(outcome.results, outcome.applied.suppressed, outcome.generated_at), indent=2)
        if sarif == "-":
            sys.stdout.write(document + "\n")
            sys.stdout.flush()
        else:
            write_atomic(Path(sarif), document.encode())
    if sarif != "-":
        emit(as_json, outcome.report, lambda: _print_report(outcome))
    if fails_gate(outcome.results, gate):
        raise typer.Exit(1)


def _who() -> str:
    actor = cli_actor()
    return f"{actor.name}@{actor.source.removeprefix('host:')}"


def _expiry(expires: str | None, duration: str | None, now: dt.datetime) -> dt.datetime:
    if (expires is None) == (duration is None):
        raise InvalidInputError(
            f"say when the suppression ends: --expires YYYY-MM-DD or --for 30d (at most {MAX_SUPPRESSION.days} days)"
        )
    if duration is not None:
        match = _DURATION.fullmatch(duration.strip())
        if match is None:
            raise InvalidInputError(f"--for {duration!r}: write a number and a unit, h, d or w (e.g. 30d, 12h, 2w)")
        count, unit = int(match.group(1)), match.group(2)
        return now + dt.timedelta(hours=count) * {"h": 1, "d": 24, "w": 24 * 7}[unit]
    try:
        parsed = dt.datetime.fromisoformat(str(expires))
    except ValueError as e:
        raise InvalidInputError(f"--expires {expires!r}: write a date as YYYY-MM-DD (or an ISO 8601 time)") from e
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


@app.command("suppress")
@handle_errors
def suppress(
    target: Annotated[str, typer.Argument(help="A finding id (from the report) or a check id such as STALE_DEVICE.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why this is accepted (required).")] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="End date, YYYY-MM-DD (00:00 UTC) or ISO time.")
    ] = None,
    duration: Annotated[str | None, typer.Option("--for", help="How long, e.g. 30d, 12h, 2w.")] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="With a check id: only this resource (e.g. thing:cam1).")
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Accept a finding (or every finding of a check) for a reason, until an end date (at most a year)."""
    if not reason or not reason.strip():
        raise InvalidInputError("a suppression needs a reason: --reason 'why this finding is accepted'")
    now = dt.datetime.now(dt.UTC)
    expires_at = _expiry(expires, duration, now)
    platform = open_platform(data_dir)
    if _FINDING_ID.fullmatch(target):
        if resource is not None:
            raise InvalidInputError("a finding id names its resource already: drop --resource")
        check_id, chosen = resolve_finding(platform, target)
        resource_of: str | None = chosen
    elif _CHECK_ID.fullmatch(target):
        known = {r.info.id for r in run_audit(platform).all_results}
        if target not in known:
            raise InvalidInputError(f"no check {target!r}; the checks are: {', '.join(sorted(known))}")
        check_id, resource_of = target, resource
    else:
        raise InvalidInputError(
            f"{target!r} is neither a finding id ({FINDING_ID_LENGTH} hex digits) nor a check id (e.g. STALE_DEVICE)"
        )
    with platform.db.session() as session:
        created = add_suppression(session, cli_actor(), check_id, resource_of, reason, expires_at, now)
    emit(as_json, created.to_dict())


@app.command("suppressions")
@handle_errors
def suppressions(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List suppressions; expired ones are marked (they no longer apply)."""
    platform = open_platform(data_dir)
    now = dt.datetime.now(dt.UTC)
    with platform.db.read() as session:
        listed = list_suppressions(session)
    rows = [{**s.to_dict(), "expired": s.expired(now)} for s in listed]

    def human() -> None:
        table = Table("id", "check", "resource", "reason", "expires", "by")
        for row in rows:
            until = row["expires_at"][:10] + (" [yellow](expired)[/]" if row["expired"] else "")
            table.add_row(
                str(row["id"]), row["check"], row["resource"] or "(all)", row["reason"], until, row["created_by"]
            )
        console.print(table)

    emit(as_json, {"suppressions": rows}, human)


@app.command("unsuppress")
@handle_errors
def unsuppress(
    suppression_id: Annotated[int, typer.Argument(help="The suppression's id (see 'audit suppressions').")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove a suppression: its findings count again."""
    platform = open_platform(data_dir)
    with platform.db.session() as session:
        removed = remove_suppression(session, cli_actor(), suppression_id)
    emit(as_json, {"removed": removed.to_dict()})


@app.command("history")
@handle_errors
def history(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Newest N runs.")] = 20,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Stored audit runs, newest first (saved with --save or by the server's schedule)."""
    platform = open_platform(data_dir)
    with platform.db.read() as session:
        runs = list_runs(session, limit)
    data: dict[str, Any] = {"runs": [run.to_dict() for run in runs]}

    def human() -> None:
        table = Table("run", "at", "triggered by", *SEVERITIES)
        for run in runs:
            counts = run.summary["findings"]
            table.add_row(str(run.id), run.at.isoformat()[:19], run.triggered_by, *(str(counts[s]) for s in SEVERITIES))
        console.print(table)

    emit(as_json, data, human)


@app.command("mitigate")
@handle_errors
def mitigate_finding(
    finding: Annotated[str, typer.Argument(help="The finding id (from the report) about a thing.")],
    action: Annotated[str, typer.Option("--action", help="quarantine, revoke or disable.")],
    undo: Annotated[bool, typer.Option("--undo", help="Reverse a quarantine or a disable.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Act on the thing a finding is about; every action goes to the audit log.

    quarantine: the thing's groups are swapped for the 'quarantine' group, which only lets it connect,
    receive its commands and updates, and report update status (--undo gives the groups back).
    revoke: its certificates are revoked (cannot be undone). disable: disabled and revoked (--undo enables).
    """
    chosen = parse_action(action)
    platform = open_platform(data_dir)
    actor = cli_actor()
    result = undo_mitigation(platform, actor, finding, chosen) if undo else mitigate(platform, actor, finding, chosen)
    emit(as_json, result.to_dict())
