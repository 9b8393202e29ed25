"""Audit results as a report: the JSON shape scripts read, and the CI gate (`--fail-on`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from thingward.audit.model import SEVERITIES, CheckResult, Severity, finding_id, severity_rank


def build_report(
    results: Sequence[CheckResult],
    generated_at: dt.datetime,
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report: summary, checks worst first, each finding with its stable id.

    `extras` adds keys (suppressed findings, expired suppressions, changes since the last stored run).
    """
    findings_by_severity = {severity: 0 for severity in SEVERITIES}
    statuses = {"pass": 0, "fail": 0, "not_applicable": 0}
    for result in results:
        statuses[result.status] += 1
        for finding in result.findings:
            findings_by_severity[finding.severity] += 1
    ordered = sorted(results, key=lambda r: (r.status != "fail", severity_rank(r.severity), r.info.id))
    checks = []
    for result in ordered:
        check = result.to_dict()
        for finding in check["findings"]:
            finding["id"] = finding_id(result.info.id, finding["resource"])
        checks.append(check)
    return {
        "generated_at": generated_at.isoformat(),
        "summary": {"findings": findings_by_severity, "checks": statuses},
        "checks": checks,
        **(extras or {}),
    }


def fails_gate(results: Sequence[CheckResult], fail_on: Severity | None) -> bool:
    """True when a finding at or above `fail_on` exists (for CI: exit non-zero)."""
    if fail_on is None:
        return False
    limit = severity_rank(fail_on)
    return any(severity_rank(f.severity) <= limit for r in results for f in r.findings)
