"""Suppressions: a finding someone has accepted, with a reason and an end date. Pure: no I/O here.

A suppressed finding is shown apart and does not count for the CI gate; a suppression past its expiry
applies no more (its findings count again) and is reported, so nothing stays accepted by forgetting.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thingward.audit.model import CheckInfo, CheckResult, Finding, finding_id

MAX_SUPPRESSION = dt.timedelta(days=365)


@dataclass(frozen=True)
class Suppression:
    id: int
    check_id: str
    resource: str | None  # None: every finding of the check
    reason: str
    created_at: dt.datetime
    created_by: str
    expires_at: dt.datetime

    def covers(self, check_id: str, resource: str) -> bool:
        return self.check_id == check_id and self.resource in (None, resource)

    def expired(self, now: dt.datetime) -> bool:
        return self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "check": self.check_id,
            "resource": self.resource,
            "finding_id": finding_id(self.check_id, self.resource) if self.resource is not None else None,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat(),
        }


@dataclass(frozen=True)
class SuppressedFinding:
    info: CheckInfo
    finding: Finding
    suppression: Suppression

    @property
    def id(self) -> str:
        return finding_id(self.info.id, self.finding.resource)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "check": self.info.id,
            "resource": self.finding.resource,
            "message": self.finding.message,
            "severity": self.finding.severity,
            "suppression": {
                "id": self.suppression.id,
                "reason": self.suppression.reason,
                "expires_at": self.suppression.expires_at.isoformat(),
            },
        }


@dataclass(frozen=True)
class Suppressed:
    """Check results without the suppressed findings, the findings taken out, and the lapsed suppressions."""

    results: list[CheckResult]
    suppressed: list[SuppressedFinding]
    expired: list[Suppression]


def apply_suppressions(
    results: Sequence[CheckResult], suppressions: Sequence[Suppression], now: dt.datetime
) -> Suppressed:
    active = [s for s in suppressions if not s.expired(now)]
    expired = [s for s in suppressions if s.expired(now)]
    kept_results: list[CheckResult] = []
    taken: list[SuppressedFinding] = []
    for result in results:
        kept: list[Finding] = []
        for finding in result.findings:
            match = next((s for s in active if s.covers(result.info.id, finding.resource)), None)
            if match is None:
                kept.append(finding)
            else:
                taken.append(SuppressedFinding(result.info, finding, match))
        if len(kept) == len(result.findings):
            kept_results.append(result)
            continue
        gone = len(result.findings) - len(kept)
        kept_results.append(
            dataclasses.replace(
                result,
                findings=tuple(kept),
                status="fail" if kept else "pass",
                note=f"{gone} finding(s) suppressed" + (f"; {result.note}" if result.note else ""),
            )
        )
    return Suppressed(kept_results, taken, expired)
