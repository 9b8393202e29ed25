"""What the fleet audit keeps in the registry: suppressions, stored runs, and mitigations applied.

Every change to a suppression is written to the audit log in the same transaction. Stored runs are a
record of their own (the server saves one per scheduled audit) and are pruned to the newest `keep`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from thingward.audit.suppress import MAX_SUPPRESSION, Suppression
from thingward.errors import InvalidInputError, NotFoundError
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import AuditRun, AuditSuppression

MAX_REASON_LENGTH = 1000


def _suppression(row: AuditSuppression) -> Suppression:
    return Suppression(
        id=row.id,
        check_id=row.check_id,
        resource=row.resource,
        reason=row.reason,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
    )


def add_suppression(
    session: Session,
    actor: Actor,
    check_id: str,
    resource: str | None,
    reason: str,
    expires_at: dt.datetime,
    now: dt.datetime | None = None,
) -> Suppression:
    """Accept the findings of `check_id` (on `resource`, or all of them) until `expires_at`, for `reason`."""
    now = now or dt.datetime.now(dt.UTC)
    reason = reason.strip()
    if not reason:
        raise InvalidInputError("a suppression needs a reason: say why this finding is accepted (--reason)")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInputError(f"the reason is {len(reason)} characters long; the limit is {MAX_REASON_LENGTH}")
    if expires_at <= now:
        raise InvalidInputError(f"the expiry {expires_at:%Y-%m-%d %H:%M} UTC is in the past: choose a later date")
    if expires_at - now > MAX_SUPPRESSION:
        raise InvalidInputError(
            f"a suppression may last at most {MAX_SUPPRESSION.days} days: choose an expiry before "
            f"{now + MAX_SUPPRESSION:%Y-%m-%d}, and renew it then if the reason still holds"
        )
    row = AuditSuppression(
        check_id=check_id,
        resource=resource,
        reason=reason,
        created_at=now,
        created_by=actor.name,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    suppression = _suppression(row)
    record_event(session, actor, "audit.suppress", f"suppression:{row.id}", suppression.to_dict())
    return suppression


def list_suppressions(session: Session) -> list[Suppression]:
    rows = session.execute(select(AuditSuppression).order_by(AuditSuppression.id)).scalars()
    return [_suppression(row) for row in rows]


def remove_suppression(session: Session, actor: Actor, suppression_id: int) -> Suppression:
    row = session.get(AuditSuppression, suppression_id)
    if row is None:
        raise NotFoundError(f"no suppression with id {suppression_id}: see 'thingward audit suppressions'")
    suppression = _suppression(row)
    session.delete(row)
    record_event(session, actor, "audit.unsuppress", f"suppression:{suppression_id}", suppression.to_dict())
    return suppression


@dataclass(frozen=True)
class StoredRun:
    id: int
    at: dt.datetime
    triggered_by: str
    summary: dict[str, Any]
    findings: list[dict[str, Any]]  # each {id, check, resource, severity, suppressed}

    def to_dict(self, with_findings: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "at": self.at.isoformat(),
            "triggered_by": self.triggered_by,
            "summary": self.summary,
        }
        if with_findings:
            data["findings"] = self.findings
        return data


def _run(row: AuditRun) -> StoredRun:
    return StoredRun(row.id, row.at, row.triggered_by, json.loads(row.summary), json.loads(row.findings))


def save_run(
    session: Session,
    at: dt.datetime,
    triggered_by: str,
    summary: dict[str, Any],
    findings: Sequence[dict[str, Any]],
    keep: int,
) -> StoredRun:
    """Store a run and prune all but the newest `keep` runs."""
    row = AuditRun(
        at=at,
        triggered_by=triggered_by,
        summary=json.dumps(summary, sort_keys=True, separators=(",", ":")),
        findings=json.dumps(list(findings), sort_keys=True, separators=(",", ":")),
    )
    session.add(row)
    session.flush()
    oldest_kept = session.execute(
        select(AuditRun.id).order_by(AuditRun.id.desc()).offset(max(keep, 1) - 1).limit(1)
    ).scalar()
    if oldest_kept is not None:
        session.execute(delete(AuditRun).where(AuditRun.id < oldest_kept))
    return _run(row)


def latest_run(session: Session) -> StoredRun | None:
    row = session.execute(select(AuditRun).order_by(AuditRun.id.desc()).limit(1)).scalar_one_or_none()
    return _run(row) if row is not None else None


def list_runs(session: Session, limit: int = 20) -> list[StoredRun]:
    rows = session.execute(select(AuditRun).order_by(AuditRun.id.desc()).limit(limit)).scalars()
    return [_run(row) for row in rows]
