"""`thingward scan`: the LAN scanner for the home or lab network the user names (open ports, services,
TLS, default logins), as a table or JSON, with a --fail-on gate like the audit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from thingward.audit.model import SEVERITY_COLOURS, parse_severity
from thingward.audit.report import fails_gate
from thingward.audit.scanner import (
    LoginPolicy,
    ScanOptions,
    ScanReport,
    load_credentials,
    parse_ports,
    parse_targets,
    run_scan,
)
from thingward.audit.scanner.findings import scan_to_check_results
from thingward.cli.common import JsonFlag, console, emit, err_console, handle_errors


def _print_report(report: ScanReport) -> None:
    table = Table("host", "port", "service", "banner", "TLS", "default login", title="thingward scan")
    for host in report.hosts:
        if not host.ports:
            table.add_row(host.address, "-", "up, no open port", "", "", "")
        for port in host.ports:
            tls = ""
            if port.tls is not None:
                flags = [f for f, on in (("expired", port.tls.expired), ("self-signed", port.tls.self_signed)) if on]
                tls = " ".join(port.tls.versions) + (f" [red]{', '.join(flags)}[/]" if flags else "")
            logins = ", ".join(
                "[red]anonymous access[/]" if w.anonymous else f"[bold red]{w.username} / {w.password}[/]"
                for w in port.weak_credentials
            )
            table.add_row(
                host.address, f"{port.port}/{port.protocol}", port.service, port.banner[:60], tls, logins or "-"
            )
    console.print(table)
    console.print(
        f"{len(report.hosts)} host(s) up of {len(report.targets)}, {report.ports_scanned} TCP port(s) each, "
        f"{report.login_attempts} login attempt(s), {report.duration_s:.1f} s"
    )
    for result in scan_to_check_results(report):
        for finding in result.findings:
            colour = SEVERITY_COLOURS[finding.severity]
            console.print(f"[{colour}]{finding.severity}[/] {result.info.id} {finding.resource}: {finding.message}")


@handle_errors
def scan(
    targets: Annotated[
        list[str], typer.Argument(help="Addresses, networks (192.168.1.0/24), ranges (10.0.0.5-20) or host names.")
    ],
    ports: Annotated[str, typer.Option("--ports", help="top (common IoT ports), all, or a list: 22,80,8000-8100.")] = (
        "top"
    ),
    credentials: Annotated[
        bool, typer.Option("--credentials", help="Try default logins (Mirai list and vendor defaults).")
    ] = False,
    credentials_file: Annotated[
        Path | None, typer.Option("--credentials-file", help="More username:password pairs, tried first.")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=1000, help="Login attempts per service at most.")
    ] = 20,
    attempt_rate: Annotated[
        float, typer.Option("--attempt-rate", min=0.1, max=100, help="Login attempts per second, whole scan.")
    ] = 10.0,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=20000, help="TCP connects in flight at most.")
    ] = 1000,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.05, max=30, help="Seconds to wait for each TCP connect.")
    ] = 1.0,
    rate: Annotated[float, typer.Option("--rate", min=0, help="New TCP connects per second (0: no limit).")] = 0.0,
    probe_timeout: Annotated[
        float, typer.Option("--probe-timeout", min=0.1, max=30, help="Seconds per identification or login probe.")
    ] = 3.0,
    udp: Annotated[bool, typer.Option("--udp/--no-udp", help="Probe SSDP (1900), mDNS (5353), CoAP (5683).")] = True,
    allow_public: Annotated[
        bool, typer.Option("--allow-public", help="Allow targets outside loopback and the private ranges.")
    ] = False,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", help="Exit 1 if a finding at or above this severity exists.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Scan hosts you own: open TCP ports, services, TLS, default logins; only the targets you name."""
    gate = parse_severity(fail_on)
    addresses = parse_targets(targets, allow_public=allow_public)
    options = ScanOptions(
        ports=parse_ports(ports),
        concurrency=concurrency,
        connect_timeout=timeout,
        connect_rate=rate,
        probe_timeout=probe_timeout,
        banner_wait=min(1.0, probe_timeout),
        udp=udp,
        credentials=load_credentials(credentials_file) if credentials or credentials_file else (),
        logins=LoginPolicy(max_attempts=max_attempts, rate=attempt_rate, timeout=probe_timeout),
    )
    if as_json:
        report = asyncio.run(run_scan(addresses, options))
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task("connect scan", total=len(addresses) * len(options.ports))
            report = asyncio.run(
                run_scan(
                    addresses,
                    options,
                    progress=lambda done, total: progress.update(task, completed=done),
                    stage=lambda text: progress.update(task, description=text),
                )
            )
    emit(as_json, report.to_dict(), lambda: _print_report(report))
    if fails_gate(scan_to_check_results(report), gate):
        raise typer.Exit(1)
