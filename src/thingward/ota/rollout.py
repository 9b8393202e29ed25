"""Rollout campaigns: create, list, show, pause, resume, cancel; the scheduler's tick; devices' status reports.

Every function works in the caller's transaction. Operator actions and the scheduler's campaign-level
decisions (a wave started, an abort, the end) are written to the audit log; each device's job keeps its
own states and times in `rollout_jobs` (a line per job state in the audit log would drown it). The
decisions themselves are pure (`rollout_engine`); this module reads rows, asks, and writes the answer.

Only the server publishes to devices. A change a device must hear of sets the job's `notify` flag; the
server's scheduler (`rollout_scheduler`) turns flagged jobs into `deliveries` and publishes them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from packaging.version import Version
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.ota.firmware import list_images, parse_version
from thingward.ota.job_protocol import FINAL_STATES, JOB_STATES, JobDocument, StatusReport
from thingward.ota.rollout_engine import (
    ACTIVE_CAMPAIGN_STATES,
    DEFAULT_WAVES,
    CampaignView,
    JobView,
    Tick,
    decide,
    judge_report,
    plan_waves,
)
from thingward.registry import device_state
from thingward.registry.audit_log import SYSTEM, Actor, record_event
from thingward.registry.models import RolloutCampaign, RolloutJob, Thing, ThingGroup

__all__ = [
    "CampaignSummary",
    "Delivery",
    "ReportOutcome",
    "RolloutOptions",
    "cancel_rollout",
    "create_fix_rollout",
    "create_rollout",
    "get_rollout",
    "list_rollouts",
    "pause_rollout",
    "pending_documents",
    "record_status",
    "resume_rollout",
    "run_tick",
    "take_deliveries",
]

logger = logging.getLogger(__name__)

MAX_WAVES = 10


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class RolloutOptions:
    waves: tuple[int, ...] = DEFAULT_WAVES
    max_per_minute: int = 60
    abort_failure_percent: int = 20
    abort_min_finished: int = 5
    timeout_seconds: int = 900
    retries: int = 1

    def check(self) -> None:
        waves = self.waves
        if not 1 <= len(waves) <= MAX_WAVES:
            raise InvalidInputError(f"give 1 to {MAX_WAVES} waves (cumulative percentages such as 1,10,50,100)")
        if any(not 0 < w <= 100 for w in waves) or list(waves) != sorted(set(waves)) or waves[-1] != 100:
            raise InvalidInputError(
                f"waves {','.join(map(str, waves))}: cumulative percentages, rising, each 1-100, the last 100"
            )
        for name, value, low, high in (
            ("--max-per-minute", self.max_per_minute, 1, 100_000),
            ("--abort-failure-percent", self.abort_failure_percent, 1, 100),
            ("--abort-min-finished", self.abort_min_finished, 1, 1_000_000),
            ("--timeout", self.timeout_seconds, 5, 7 * 24 * 3600),
            ("--retries", self.retries, 0, 10),
        ):
            if not low <= value <= high:
                raise InvalidInputError(f"{name} {value} is outside {low}-{high}")


@dataclass(frozen=True)
class JobSummary:
    thing: str
    wave: int
    state: str
    substate: str | None
    attempt: int
    from_version: str | None
    reported_version: str | None
    reason: str
    released_at: dt.datetime | None
    updated_at: dt.datetime
    finished_at: dt.datetime | None

    def to_dict(self) -> dict[str, object]:
        return {
            "thing": self.thing,
            "wave": self.wave + 1,
            "state": self.state,
            "substate": self.substate,
            "attempt": self.attempt,
            "from_version": self.from_version,
            "reported_version": self.reported_version,
            "reason": self.reason,
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


@dataclass(frozen=True)
class CampaignSummary:
    id: int
    model: str
    version: str
    group: str | None
    advisory_id: str | None
    state: str
    waves: tuple[int, ...]
    wave_sizes: tuple[int, ...]
    current_wave: int
    options: RolloutOptions
    reason: str
    created_at: dt.datetime
    created_by: str
    finished_at: dt.datetime | None
    counts: dict[str, int]
    jobs: tuple[JobSummary, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def wave_shares(self) -> list[int]:
        """The share of the campaign's devices each wave reaches, cumulative, in percent (a small fleet's
        waves can differ from the ones asked for: a wave holds one device at least)."""
        total = max(sum(self.wave_sizes), 1)
        shares, reached = [], 0
        for size in self.wave_sizes:
            reached += size
            shares.append(round(reached * 100 / total))
        return shares

    def wave_counts(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for index, (size, share) in enumerate(zip(self.wave_sizes, self.wave_shares(), strict=True)):
            states = Counter(j.state for j in self.jobs if j.wave == index)
            out.append({"wave": index + 1, "percent": share, "devices": size, "states": dict(states)})
        return out

    def to_dict(self, with_jobs: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "group": self.group,
            "advisory": self.advisory_id,
            "state": self.state,
            "waves": list(self.waves),
            "wave_sizes": list(self.wave_sizes),
            "current_wave": self.current_wave + 1,
            "max_per_minute": self.options.max_per_minute,
            "abort_failure_percent": self.options.abort_failure_percent,
            "abort_min_finished": self.options.abort_min_finished,
            "timeout_seconds": self.options.timeout_seconds,
            "retries": self.options.retries,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "devices": self.total,
            "counts": {state: self.counts.get(state, 0) for state in JOB_STATES},
        }
        if self.skipped:
            body["skipped"] = self.skipped
        if with_jobs:
            body["wave_progress"] = self.wave_counts()
            body["jobs"] = [j.to_dict() for j in self.jobs]
        return body


def _options(row: RolloutCampaign) -> RolloutOptions:
    return RolloutOptions(
        tuple(json.loads(row.waves)),
        row.max_per_minute,
        row.abort_failure_percent,
        row.abort_min_finished,
        row.timeout_seconds,
        row.retries,
    )


def _summary(
    session: Session, row: RolloutCampaign, with_jobs: bool, skipped: dict[str, list[str]] | None = None
) -> CampaignSummary:
    options = _options(row)
    jobs: list[JobSummary] = []
    sizes = [0] * len(options.waves)
    counts: Counter[str] = Counter()
    query = (
        select(RolloutJob, Thing.name)
        .join(Thing, Thing.id == RolloutJob.thing_id)
        .where(RolloutJob.campaign_id == row.id)
        .order_by(RolloutJob.wave, Thing.name)
    )
    for job, name in session.execute(query):
        counts[job.state] += 1
        if job.wave < len(sizes):
            sizes[job.wave] += 1
        if with_jobs:
            jobs.append(
                JobSummary(
                    name,
                    job.wave,
                    job.state,
                    job.substate,
                    job.attempt,
                    job.from_version,
                    job.reported_version,
                    job.reason,
                    job.released_at,
                    job.updated_at,
                    job.finished_at,
                )
            )
    waves_used = max((i + 1 for i, size in enumerate(sizes) if size), default=len(sizes))
    return CampaignSummary(
        row.id,
        row.model,
        row.version,
        row.group_name,
        row.advisory_id,
        row.state,
        options.waves,
        tuple(sizes[:waves_used]),
        row.current_wave,
        options,
        row.reason,
        row.created_at,
        row.created_by,
        row.finished_at,
        dict(counts),
        tuple(jobs),
        skipped or {},
    )


# -- creating campaigns ------------------------------------------------------------------------------


def _group_and_descendants(session: Session, name: str) -> list[int]:
    groups = session.execute(select(ThingGroup.id, ThingGroup.name, ThingGroup.parent_id)).all()
    root = next((g for g in groups if g.name == name), None)
    if root is None:
        raise NotFoundError(f"no group named {name!r}")
    chosen = {root.id}
    grew = True
    while grew:
        grew = False
        for g in groups:
            if g.parent_id in chosen and g.id not in chosen:
                chosen.add(g.id)
                grew = True
    return sorted(chosen)


def _things_in_group(session: Session, name: str) -> list[Thing]:
    ids = _group_and_descendants(session, name)
    things = session.execute(select(Thing).where(Thing.groups.any(ThingGroup.id.in_(ids))).order_by(Thing.name))
    return list(things.scalars().all())


def _busy_things(session: Session, thing_ids: Sequence[int]) -> list[str]:
    """Things that already have an unfinished job in some campaign."""
    query = (
        select(Thing.name)
        .join(RolloutJob, RolloutJob.thing_id == Thing.id)
        .where(RolloutJob.thing_id.in_(thing_ids), RolloutJob.state.in_(("queued", "in_progress")))
        .distinct()
    )
    return sorted(session.execute(query).scalars().all())


def _insert_campaign(
    session: Session,
    actor: Actor,
    model: str,
    version: Version,
    candidates: Sequence[Thing],
    options: RolloutOptions,
    group: str | None,
    advisory_id: str | None,
    now: dt.datetime,
) -> CampaignSummary:
    options.check()
    image = next((i for i in list_images(session, model) if Version(i.version) == version), None)
    if image is None:
        raise NotFoundError(
            f"{model} {version} is not published: 'thingward ota publish FILE --model {model} ...' first"
        )
    reports = {r.thing: r for r in device_state.latest_reports(session)}
    skipped: dict[str, list[str]] = {}
    chosen: list[tuple[Thing, str]] = []
    floor = Version(image.min_version) if image.min_version else None
    for thing in candidates:
        report = reports.get(thing.name)
        running = report.report.firmware_version if report else None
        if thing.disabled:
            skipped.setdefault("disabled", []).append(thing.name)
        elif report is None or report.model != model or running is None:
            skipped.setdefault("not this model (or no state report yet)", []).append(thing.name)
        else:
            try:
                current = Version(running)
            except ValueError:
                skipped.setdefault("reports no valid version", []).append(thing.name)
                continue
            if current >= version:
                skipped.setdefault(f"already on {version} or newer", []).append(thing.name)
            elif floor is not None and current < floor:
                skipped.setdefault(f"older than {floor}, the oldest that may update to {version}", []).append(
                    thing.name
                )
            else:
                chosen.append((thing, running))
    if not chosen:
        where = f"group {group!r}" if group else f"advisory {advisory_id}"
        raise InvalidInputError(
            f"no device of model {model} in {where} needs {version}"
            + (f" (skipped: {', '.join(f'{len(v)} {k}' for k, v in skipped.items())})" if skipped else "")
        )
    busy = _busy_things(session, [t.id for t, _ in chosen])
    if busy:
        raise ConflictError(
            f"{len(busy)} device(s) already have an unfinished rollout job ({', '.join(busy[:5])}"
            + (", ..." if len(busy) > 5 else "")
            + "): let that rollout finish, or cancel it first"
        )
    row = RolloutCampaign(
        model=model,
        version=str(version),
        target_path=image.target_path,
        group_name=group,
        advisory_id=advisory_id,
        state="running",
        waves=json.dumps(list(options.waves)),
        current_wave=0,
        max_per_minute=options.max_per_minute,
        abort_failure_percent=options.abort_failure_percent,
        abort_min_finished=options.abort_min_finished,
        timeout_seconds=options.timeout_seconds,
        retries=options.retries,
        reason="",
        created_at=now,
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    # A stable, campaign-specific shuffle: the canary wave is not always the alphabetically first devices.
    chosen.sort(key=lambda pair: hashlib.sha256(f"{row.id}:{pair[0].name}".encode()).digest())
    for (thing, running), wave in zip(chosen, plan_waves(len(chosen), options.waves), strict=True):
        session.add(
            RolloutJob(
                campaign_id=row.id,
                thing_id=thing.id,
                wave=wave,
                state="queued",
                attempt=0,
                from_version=running,
                reason="",
                updated_at=now,
                notify=False,
            )
        )
    session.flush()
    summary = _summary(session, row, with_jobs=False, skipped=skipped)
    record_event(
        session,
        actor,
        "rollout.create",
        f"rollout:{row.id}",
        {
            "model": model,
            "version": str(version),
            "group": group,
            "advisory": advisory_id,
            "devices": len(chosen),
            "waves": list(summary.wave_sizes),
            "max_per_minute": options.max_per_minute,
            "abort_failure_percent": options.abort_failure_percent,
            "abort_min_finished": options.abort_min_finished,
            "timeout_seconds": options.timeout_seconds,
            "retries": options.retries,
        },
    )
    return summary


def create_rollout(
    session: Session,
    actor: Actor,
    model: str,
    version: str,
    group: str,
    options: RolloutOptions | None = None,
    now: dt.datetime | None = None,
) -> CampaignSummary:
    """A campaign sending `model` `version` to the devices of that model in `group` (and its sub-groups)."""
    target = parse_version(version)
    return _insert_campaign(
        session,
        actor,
        model,
        target,
        _things_in_group(session, group),
        options or RolloutOptions(),
        group,
        None,
        now or _now(),
    )


def fix_version(session: Session, advisory: device_state.Advisory, running: Sequence[str]) -> Version:
    """The first published version of the advisory's model outside its affected range and above every
    affected device's version (a version outside the range can be older than the devices)."""
    newest_running = max((Version(v) for v in running), default=None)
    for image in list_images(session, advisory.model):
        candidate = Version(image.version)
        if device_state.version_affected(image.version, advisory.affected):
            continue
        if newest_running is not None and candidate <= newest_running:
            continue
        return candidate
    raise NotFoundError(
        f"no published {advisory.model} version fixes {advisory.advisory_id} (affected {advisory.affected}): "
        f"publish a fixed one with 'thingward ota publish FILE --model {advisory.model} --version V'"
    )


def create_fix_rollout(
    session: Session,
    actor: Actor,
    advisory_id: str,
    options: RolloutOptions | None = None,
    group: str | None = None,
    now: dt.datetime | None = None,
) -> CampaignSummary:
    """A campaign taking every device the advisory affects to the first version that fixes it."""
    advisory = device_state.get_advisory(session, advisory_id)
    affected = device_state.affected_devices(advisory, device_state.latest_reports(session))
    if group is not None:
        members = {t.name for t in _things_in_group(session, group)}
        affected = [d for d in affected if d.thing in members]
    if not affected:
        raise InvalidInputError(f"no device reports a version affected by {advisory_id} ({advisory.affected})")
    version = fix_version(session, advisory, [d.version for d in affected])
    names = [d.thing for d in affected]
    candidates = list(session.execute(select(Thing).where(Thing.name.in_(names))).scalars().all())
    return _insert_campaign(
        session,
        actor,
        advisory.model,
        version,
        candidates,
        options or RolloutOptions(),
        group,
        advisory_id,
        now or _now(),
    )


# -- reading -------------------------------------------------------------------------------------------


def _campaign(session: Session, campaign_id: int) -> RolloutCampaign:
    row = session.get(RolloutCampaign, campaign_id)
    if row is None:
        raise NotFoundError(f"no rollout {campaign_id}: 'thingward ota rollout list' shows them")
    return row


def list_rollouts(session: Session, active_only: bool = False) -> list[CampaignSummary]:
    query = select(RolloutCampaign).order_by(RolloutCampaign.id.desc())
    if active_only:
        query = query.where(RolloutCampaign.state.in_(ACTIVE_CAMPAIGN_STATES))
    return [_summary(session, row, with_jobs=False) for row in session.execute(query).scalars()]


def get_rollout(session: Session, campaign_id: int) -> CampaignSummary:
    return _summary(session, _campaign(session, campaign_id), with_jobs=True)


# -- operator actions ------------------------------------------------------------------------------------


def pause_rollout(session: Session, actor: Actor, campaign_id: int) -> CampaignSummary:
    """Stop releasing jobs; jobs already sent go on (and still time out)."""
    row = _campaign(session, campaign_id)
    if row.state != "running":
        raise ConflictError(f"rollout {campaign_id} is {row.state}; only a running rollout can be paused")
    row.state = "paused"
    record_event(session, actor, "rollout.pause", f"rollout:{campaign_id}", {})
    return _summary(session, row, with_jobs=False)


def resume_rollout(session: Session, actor: Actor, campaign_id: int) -> CampaignSummary:
    row = _campaign(session, campaign_id)
    if row.state != "paused":
        raise ConflictError(f"rollout {campaign_id} is {row.state}; only a paused rollout can be resumed")
    row.state = "running"
    record_event(session, actor, "rollout.resume", f"rollout:{campaign_id}", {})
    return _summary(session, row, with_jobs=False)


def _cancel_queued(session: Session, campaign_id: int, reason: str, now: dt.datetime) -> int:
    jobs = session.execute(
        select(RolloutJob).where(RolloutJob.campaign_id == campaign_id, RolloutJob.state == "queued")
    ).scalars()
    count = 0
    for job in jobs:
        job.state, job.substate, job.reason = "canceled", None, reason
        job.updated_at = job.finished_at = now
        # A device holding the job document must hear that it is off.
        job.notify = job.released_at is not None
        count += 1
    return count


def cancel_rollout(session: Session, actor: Actor, campaign_id: int, now: dt.datetime | None = None) -> CampaignSummary:
    """Cancel the campaign: queued jobs end canceled; devices already installing finish what they do."""
    now = now or _now()
    row = _campaign(session, campaign_id)
    if row.state not in ACTIVE_CAMPAIGN_STATES:
        raise ConflictError(f"rollout {campaign_id} is {row.state} already")
    canceled = _cancel_queued(session, campaign_id, "rollout canceled", now)
    row.state, row.reason, row.finished_at = "canceled", f"canceled by {actor.name}", now
    record_event(session, actor, "rollout.cancel", f"rollout:{campaign_id}", {"canceled_jobs": canceled})
    return _summary(session, row, with_jobs=False)


# -- the scheduler's tick ---------------------------------------------------------------------------------


def _job_view(job: RolloutJob) -> JobView:
    return JobView(job.id, job.wave, job.state, job.attempt, job.released_at)


def _campaign_view(row: RolloutCampaign) -> CampaignView:
    return CampaignView(
        row.id,
        row.state,
        row.current_wave,
        len(json.loads(row.waves)),
        row.max_per_minute,
        row.abort_failure_percent,
        row.abort_min_finished,
        dt.timedelta(seconds=row.timeout_seconds),
        row.retries,
    )


def _apply_tick(
    session: Session, row: RolloutCampaign, jobs: dict[int, RolloutJob], tick: Tick, now: dt.datetime
) -> None:
    for job_id in tick.retry:
        job = jobs[job_id]
        job.state, job.substate, job.released_at = "queued", None, None
        job.reason = f"attempt {job.attempt} timed out; retrying"
        job.updated_at = now
    for job_id in tick.time_out:
        job = jobs[job_id]
        job.state, job.substate, job.reason = "timed_out", None, f"no result within {row.timeout_seconds} s"
        job.updated_at = job.finished_at = now
        job.notify = True  # tell the device to drop it, should it come back
    for job_id in tick.cancel:
        job = jobs[job_id]
        job.state, job.substate, job.reason = "canceled", None, "rollout aborted"
        job.updated_at = job.finished_at = now
        job.notify = job.released_at is not None
    for job_id in tick.release:
        job = jobs[job_id]
        job.attempt += 1
        job.released_at = job.updated_at = now
        job.notify = True
    if tick.current_wave is not None:
        row.current_wave = tick.current_wave
        size = sum(1 for j in jobs.values() if j.wave == tick.current_wave)
        record_event(
            session, SYSTEM, "rollout.wave", f"rollout:{row.id}", {"wave": tick.current_wave + 1, "devices": size}
        )
    if tick.campaign_state is not None:
        row.state, row.reason, row.finished_at = tick.campaign_state, tick.reason, now
        counts = Counter(j.state for j in jobs.values())
        action = "rollout.abort" if tick.campaign_state == "aborted" else "rollout.complete"
        record_event(session, SYSTEM, action, f"rollout:{row.id}", {"reason": tick.reason, "counts": dict(counts)})
        logger.info("rollout %d %s: %s", row.id, tick.campaign_state, tick.reason)


def run_tick(session: Session, now: dt.datetime | None = None) -> int:
    """Apply one scheduler tick to every campaign with something to do; returns how many changed."""
    now = now or _now()
    in_flight = select(RolloutJob.campaign_id).where(RolloutJob.state.in_(("queued", "in_progress"))).distinct()
    rows = (
        session.execute(
            select(RolloutCampaign)
            .where(or_(RolloutCampaign.state.in_(ACTIVE_CAMPAIGN_STATES), RolloutCampaign.id.in_(in_flight)))
            .order_by(RolloutCampaign.id)
        )
        .scalars()
        .all()
    )
    changed = 0
    for row in rows:
        jobs = {
            j.id: j for j in session.execute(select(RolloutJob).where(RolloutJob.campaign_id == row.id)).scalars().all()
        }
        tick = decide(_campaign_view(row), [_job_view(j) for j in jobs.values()], now)
        if not tick.empty:
            _apply_tick(session, row, jobs, tick, now)
            changed += 1
    return changed


@dataclass(frozen=True)
class Delivery:
    """What to publish to one device: its job document, or an empty retained message to clear it."""

    thing: str
    document: JobDocument | None

    @property
    def payload(self) -> bytes:
        return self.document.to_payload() if self.document is not None else b""


def _document(job: RolloutJob, campaign: RolloutCampaign) -> JobDocument | None:
    if job.state in {"queued", "in_progress"} and job.released_at is not None:
        return JobDocument(
            "update",
            job.id,
            job.attempt,
            campaign.id,
            campaign.model,
            campaign.version,
            campaign.target_path,
            campaign.timeout_seconds,
        )
    if job.state in {"canceled", "timed_out"} and job.attempt > 0:
        return JobDocument("cancel", job.id, job.attempt)
    return None  # finished as the device said, or never sent: nothing left to hold


def take_deliveries(session: Session) -> list[Delivery]:
    """The documents flagged for sending, with their flags cleared (commit, then publish)."""
    query = (
        select(RolloutJob, RolloutCampaign, Thing.name)
        .join(RolloutCampaign, RolloutCampaign.id == RolloutJob.campaign_id)
        .join(Thing, Thing.id == RolloutJob.thing_id)
        .where(RolloutJob.notify.is_(True))
        .order_by(RolloutJob.id)
    )
    out = []
    for job, campaign, name in session.execute(query).all():
        job.notify = False
        out.append(Delivery(name, _document(job, campaign)))
    return out


def pending_documents(session: Session) -> list[Delivery]:
    """Every job document a device should hold now: what a broker that lost its retained messages needs."""
    query = (
        select(RolloutJob, RolloutCampaign, Thing.name)
        .join(RolloutCampaign, RolloutCampaign.id == RolloutJob.campaign_id)
        .join(Thing, Thing.id == RolloutJob.thing_id)
        .where(RolloutJob.state.in_(("queued", "in_progress")), RolloutJob.released_at.is_not(None))
        .order_by(RolloutJob.id)
    )
    return [Delivery(name, _document(job, campaign)) for job, campaign, name in session.execute(query).all()]


# -- devices' status reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportOutcome:
    accepted: bool
    reason: str = ""
    state: str = ""


def record_status(session: Session, thing: str, report: StatusReport, now: dt.datetime | None = None) -> ReportOutcome:
    """Apply a device's (parsed) status report to its job; a report about another thing's job, an old
    attempt, or a finished job is refused and changes nothing."""
    now = now or _now()
    found = session.execute(
        select(RolloutJob, RolloutCampaign, Thing.name)
        .join(RolloutCampaign, RolloutCampaign.id == RolloutJob.campaign_id)
        .join(Thing, Thing.id == RolloutJob.thing_id)
        .where(RolloutJob.id == report.job_id)
    ).first()
    if found is None or found[2] != thing:
        # One answer for "no such job" and "another thing's job": a device learns nothing about others.
        return ReportOutcome(False, f"job {report.job_id} is not a job of {thing}")
    job, campaign, _name = found
    verdict = judge_report(_job_view(job), campaign.state, campaign.version, campaign.retries, report)
    if not verdict.accepted:
        return ReportOutcome(False, verdict.reason)
    job.state, job.substate = verdict.state, verdict.substate
    job.updated_at = now
    if report.version is not None:
        job.reported_version = report.version
    if verdict.reason or verdict.state in FINAL_STATES:
        job.reason = verdict.reason[:512]
    if verdict.requeue:
        job.released_at = None  # the scheduler sends it again, as the next attempt
    elif verdict.state in FINAL_STATES:
        job.finished_at = now
        job.notify = True  # clear the retained job document
    return ReportOutcome(True, state=verdict.state)
