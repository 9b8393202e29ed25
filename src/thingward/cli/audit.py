"""`thingward audit`: every check over the registry, policies, certificates and config, ranked by severity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thingward.audit.checks import run_checks
from thingward.audit.gather import gather_snapshot
from thingward.audit.html import render_html
from thingward.audit.model import SEVERITIES, Severity
from thingward.audit.report import build_report, fails_gate
from thingward.cli.common import DataDir, JsonFlag, console, emit, handle_errors, open_platform
from thingward.errors import InvalidInputError
from thingward.pki.files import write_atomic

app = typer.Typer(help="Fleet security audit.", invoke_without_command=True)

_COLOURS = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def _severity(value: str | None) -> Severity | None:
    if value is None:
        return None
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise InvalidInputError(f"unknown severity {value!r}: use one of {', '.join(SEVERITIES)}")


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
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Run every check; print findings with severity, remediation and the standard's clause."""
    if ctx.invoked_subcommand is not None:
        return
    gate = _severity(fail_on)
    platform = open_platform(data_dir)
    snapshot = gather_snapshot(platform, expiry_days=expiry_days, stale_days=stale_days)
    results = run_checks(snapshot)
    report = build_report(results, snapshot.now)
    if html is not None:
        write_atomic(html, render_html(report).encode())

    def human() -> None:
        table = Table("severity")
        table.add_column("check", no_wrap=True)
        for name in ("status", "resource", "finding"):
            table.add_column(name)
        for check in report["checks"]:
            colour = _COLOURS[check["severity"]]
            if check["status"] != "fail":
                table.add_row(
                    f"[{colour}]{check['severity']}[/]", check["id"], check["status"], "-", check["note"] or "-"
                )
                continue
            for finding in check["findings"]:
                table.add_row(
                    f"[{_COLOURS[finding['severity']]}]{finding['severity']}[/]",
                    check["id"],
                    "[red]fail[/]",
                    finding["resource"],
                    finding["message"],
                )
        console.print(table)
        counts = report["summary"]["findings"]
        console.print("findings: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES))

    emit(as_json, report, human)
    if fails_gate(results, gate):
        raise typer.Exit(1)
