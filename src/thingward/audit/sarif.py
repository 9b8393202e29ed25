"""The audit as SARIF 2.1.0 (OASIS), for code-scanning dashboards and CI: one rule per check, one result
per finding. Not-applicable checks become tool notifications; suppressed findings keep their reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from thingward import __version__
from thingward.audit.html import STANDARD_NAMES
from thingward.audit.model import CheckInfo, CheckResult, Finding, Severity, finding_id
from thingward.audit.suppress import SuppressedFinding

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/thingward/thingward"
FINGERPRINT_KEY = "thingwardFindingId/v1"

# GitHub code scanning reads `security-severity` (0.0-10.0) to rank results; the bands follow CVSS.
SECURITY_SEVERITY: dict[Severity, str] = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0"}
LEVELS: dict[Severity, str] = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}


def _rule_name(check_id: str) -> str:
    return "".join(word.capitalize() for word in check_id.split("_"))


def _rule(info: CheckInfo) -> dict[str, Any]:
    clauses = [f"{STANDARD_NAMES.get(key, key)} {clause}" for key, clause in sorted(info.references.items())]
    return {
        "id": info.id,
        "name": _rule_name(info.id),
        "shortDescription": {"text": info.title},
        "fullDescription": {"text": f"{info.title}. Breaks: {'; '.join(clauses)}."},
        "help": {"text": info.remediation, "markdown": f"**Remediation:** {info.remediation}"},
        "defaultConfiguration": {"level": LEVELS[info.severity]},
        "properties": {
            "tags": ["security", f"part:{info.part}", *clauses],
            "security-severity": SECURITY_SEVERITY[info.severity],
            "severity": info.severity,
            "part": info.part,
            "references": dict(info.references),
        },
    }


def _location(resource: str) -> dict[str, Any]:
    kind, _, name = resource.partition(":")
    return {
        "logicalLocations": [
            {
                "name": name or kind,
                "fullyQualifiedName": resource,
                "kind": "resource",
                "properties": {"resourceType": kind if name else resource},
            }
        ]
    }


def _result(info: CheckInfo, index: int, finding: Finding) -> dict[str, Any]:
    fid = finding_id(info.id, finding.resource)
    return {
        "ruleId": info.id,
        "ruleIndex": index,
        "level": LEVELS[finding.severity],
        "message": {"text": f"{finding.resource}: {finding.message}"},
        "locations": [_location(finding.resource)],
        "partialFingerprints": {FINGERPRINT_KEY: fid},
        "properties": {
            "findingId": fid,
            "severity": finding.severity,
            "security-severity": SECURITY_SEVERITY[finding.severity],
        },
    }


def to_sarif(
    results: Sequence[CheckResult], suppressed: Sequence[SuppressedFinding], generated_at: dt.datetime
) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for result in sorted(results, key=lambda r: r.info.id):
        index[result.info.id] = len(rules)
        rules.append(_rule(result.info))
    sarif_results = [
        _result(result.info, index[result.info.id], finding) for result in results for finding in result.findings
    ]
    for taken in suppressed:
        if taken.info.id not in index:
            index[taken.info.id] = len(rules)
            rules.append(_rule(taken.info))
        entry = _result(taken.info, index[taken.info.id], taken.finding)
        entry["suppressions"] = [
            {
                "kind": "external",
                "status": "accepted",
                "justification": taken.suppression.reason,
                "properties": {
                    "suppressionId": taken.suppression.id,
                    "expiresAt": taken.suppression.expires_at.isoformat(),
                },
            }
        ]
        sarif_results.append(entry)
    notifications = [
        {
            "descriptor": {"id": result.info.id, "index": index[result.info.id]},
            "level": "note",
            "message": {"text": f"{result.info.id} not applicable: {result.note}"},
        }
        for result in results
        if result.status == "not_applicable"
    ]
    when = generated_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "thingward",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "informationUri": INFORMATION_URI,
                        "rules": rules,
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "endTimeUtc": when,
                        "toolConfigurationNotifications": notifications,
                    }
                ],
                "results": sarif_results,
            }
        ],
    }
