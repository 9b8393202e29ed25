"""The audit as one service call for every door (CLI, server schedule): gather, check, apply the
suppressions, compare with the previous stored run, and store this one when asked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thingward.audit.checks import run_checks
from thingward.audit.gather import gather_snapshot
from thingward.audit.model import CheckResult, finding_id
from thingward.audit.report import build_report
from thingward.audit.scanner.findings import NETWORK_CHECKS, scan_to_check_results
from thingward.audit.scanner.model import ScanReport
from thingward.audit.suppress import Suppressed, apply_suppressions
from thingward.errors import NotFoundError
from thingward.live import LiveState
from thingward.platform import Platform
from thingward.registry.audit_records import StoredRun, latest_run, list_suppressions, save_run


@dataclass(frozen=True)
class AuditOutcome:
    generated_at: dt.datetime
    all_results: list[CheckResult]  # before suppressions
    applied: Suppressed  # results without suppressed findings, the suppressed ones, lapsed suppressions
    changes: dict[str, Any] | None  # new and resolved since the previous stored run; None if there is none
    report: dict[str, Any]
    saved: StoredRun | None

    @property
    def results(self) -> list[CheckResult]:
        return self.applied.results


def finding_records(results: Sequence[CheckResult], suppressed_ids: set[str]) -> list[dict[str, Any]]:
    """What a stored run keeps of each finding: enough to say later what is new and what was resolved."""
    records = {}
    for result in results:
        for finding in result.findings:
            fid = finding_id(result.info.id, finding.resource)
            records[fid] = {
                "id": fid,
                "check": result.info.id,
                "resource": finding.resource,
                "severity": finding.severity,
                "suppressed": fid in suppressed_ids,
            }
    return sorted(records.values(), key=lambda r: (r["check"], r["resource"]))


def compare_runs(previous: StoredRun, current: Sequence[dict[str, Any]]) -> dict[str, Any]:
    before = {f["id"]: f for f in previous.findings}
    now = {f["id"]: f for f in current}
    return {
        "previous_run": {"id": previous.id, "at": previous.at.isoformat(), "triggered_by": previous.triggered_by},
        "new": [now[fid] for fid in now if fid not in before],
        "resolved": [before[fid] for fid in before if fid not in now],
    }


def network_results(scan: ScanReport | None) -> list[CheckResult]:
    """The LAN scan's part of the audit; without a scan every network check says why it was not judged."""
    if scan is not None:
        return scan_to_check_results(scan)
    note = "no LAN scan given: thingward scan TARGETS --credentials --json > scan.json; audit --scan-report scan.json"
    return [CheckResult(info, "not_applicable", note=note) for info in NETWORK_CHECKS]


def run_audit(
    platform: Platform,
    *,
    expiry_days: int = 30,
    stale_days: int = 30,
    live_things: frozenset[str] | None = None,
    live: LiveState | None = None,
    scan: ScanReport | None = None,
    save: bool = False,
    triggered_by: str = "cli",
) -> AuditOutcome:
    snapshot = gather_snapshot(
        platform,
        expiry_days=expiry_days,
        stale_days=stale_days,
        live_things=live_things,
        live=live,
        onboarding_max_minutes=platform.settings.audit.onboarding_max_minutes,
    )
    raw = run_checks(snapshot) + network_results(scan)
    with platform.db.read() as session:
        suppressions = list_suppressions(session)
        previous = latest_run(session)
    applied = apply_suppressions(raw, suppressions, snapshot.now)
    records = finding_records(raw, {taken.id for taken in applied.suppressed})
    changes = compare_runs(previous, records) if previous is not None else None
    report = build_report(
        applied.results,
        snapshot.now,
        extras={
            "suppressed": [taken.to_dict() for taken in applied.suppressed],
            "expired_suppressions": [s.to_dict() for s in applied.expired],
            "changes": changes,
        },
    )
    saved = None
    if save:
        with platform.db.session() as session:
            saved = save_run(
                session, snapshot.now, triggered_by, report["summary"], records, platform.settings.audit.keep_runs
            )
        report["saved_run"] = saved.id
    return AuditOutcome(snapshot.now, raw, applied, changes, report, saved)


def resolve_finding(platform: Platform, fid: str) -> tuple[str, str]:
    """The check and resource a finding id names: found now, or in the newest stored run."""
    outcome = run_audit(platform)
    for result in outcome.all_results:
        for finding in result.findings:
            if finding_id(result.info.id, finding.resource) == fid:
                return result.info.id, finding.resource
    with platform.db.read() as session:
        previous = latest_run(session)
    for record in previous.findings if previous else []:
        if record["id"] == fid:
            return str(record["check"]), str(record["resource"])
    raise NotFoundError(f"no finding with id {fid!r} now or in the last stored run: see 'thingward audit'")
