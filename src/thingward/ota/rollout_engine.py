"""The rollout decisions, pure: no database, no clock, no network (the caller passes `now` and the rows).

`plan_waves` splits a campaign's devices into waves; `decide` says what one scheduler tick does (time out
or retry overdue jobs, abort, advance a wave, release jobs within the rate, complete); `judge_report` says
what a device's status report does to its job. `thingward.ota.rollout` applies the answers in a
transaction; the tests drive these functions with a clock of their own.

Job states follow the job model (AWS IoT Jobs, hawkBit): queued -> in_progress (downloading, verifying,
installing, rebooting) -> succeeded | failed | rejected, and the server's own timed_out and canceled. A
failed or timed-out job with retries left goes back to queued; `rejected` (the device refused the image
as unsafe: a bad signature, an older version) is never retried.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from thingward.ota.job_protocol import FINAL_STATES, StatusReport

__all__ = [
    "ACTIVE_CAMPAIGN_STATES",
    "CAMPAIGN_STATES",
    "DEFAULT_WAVES",
    "CampaignView",
    "JobView",
    "ReportVerdict",
    "Tick",
    "decide",
    "judge_report",
    "plan_waves",
]

CAMPAIGN_STATES = ("running", "paused", "completed", "aborted", "canceled")
ACTIVE_CAMPAIGN_STATES = frozenset({"running", "paused"})
FAILURE_STATES = frozenset({"failed", "timed_out", "rejected"})
DEFAULT_WAVES = (1, 10, 50, 100)
RATE_WINDOW = dt.timedelta(minutes=1)


def plan_waves(count: int, waves: Sequence[int]) -> list[int]:
    """The wave index of each of `count` devices (in rollout order) for cumulative percentages `waves`.

    Each wave holds at least one device more than the one before while devices remain, so a 1% canary of
    a small fleet is still one device; waves that would be empty are dropped (indices stay contiguous).
    """
    out: list[int] = []
    wave = 0
    for percent in waves:
        upto = min(count, max(len(out) + 1, math.ceil(count * percent / 100)))
        if upto <= len(out):
            continue
        out.extend([wave] * (upto - len(out)))
        wave += 1
    out.extend([max(wave - 1, 0)] * (count - len(out)))
    return out


@dataclass(frozen=True)
class CampaignView:
    id: int
    state: str
    current_wave: int
    wave_count: int
    max_per_minute: int
    abort_failure_percent: int
    abort_min_finished: int
    timeout: dt.timedelta
    retries: int


@dataclass(frozen=True)
class JobView:
    id: int
    wave: int
    state: str
    attempt: int  # deliveries so far
    released_at: dt.datetime | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def waiting_to_send(self) -> bool:
        return self.state == "queued" and self.released_at is None


@dataclass
class Tick:
    """What one scheduler tick changes; empty when nothing is due."""

    release: list[int] = field(default_factory=list)  # send the job document (attempt + 1)
    retry: list[int] = field(default_factory=list)  # overdue with attempts left: back to queued
    time_out: list[int] = field(default_factory=list)  # overdue, no attempts left: timed_out
    cancel: list[int] = field(default_factory=list)  # queued jobs canceled by an abort
    campaign_state: str | None = None
    current_wave: int | None = None
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not (self.release or self.retry or self.time_out or self.cancel) and (
            self.campaign_state is None and self.current_wave is None
        )


def _abort_reason(campaign: CampaignView, jobs: Sequence[JobView]) -> str | None:
    finished = [j for j in jobs if j.final and j.state != "canceled"]
    failures = sum(1 for j in finished if j.state in FAILURE_STATES)
    if len(finished) < max(1, campaign.abort_min_finished):
        return None
    if failures * 100 >= campaign.abort_failure_percent * len(finished) and failures:
        return (
            f"{failures} of {len(finished)} finished devices failed ({failures * 100 // len(finished)}%), "
            f"at or over the abort threshold of {campaign.abort_failure_percent}%"
        )
    return None


def decide(campaign: CampaignView, jobs: Sequence[JobView], now: dt.datetime) -> Tick:
    """One tick of a campaign at `now`."""
    tick = Tick()
    active = campaign.state in ACTIVE_CAMPAIGN_STATES
    current: dict[int, JobView] = {j.id: j for j in jobs}
    for job in jobs:
        overdue = job.released_at is not None and now - job.released_at >= campaign.timeout
        if job.final or not overdue or job.state not in {"queued", "in_progress"}:
            continue
        if active and job.attempt <= campaign.retries:
            tick.retry.append(job.id)
            current[job.id] = replace(job, state="queued", released_at=None)
        else:
            tick.time_out.append(job.id)
            current[job.id] = replace(job, state="timed_out")
    if not active:
        return tick
    view = list(current.values())
    reason = _abort_reason(campaign, view)
    if reason is not None:
        tick.campaign_state, tick.reason = "aborted", reason
        tick.cancel = [j.id for j in view if j.state == "queued"]
        return tick
    if all(j.final for j in view):
        tick.campaign_state, tick.reason = "completed", "every device finished"
        return tick
    if campaign.state != "running":
        return tick
    wave = campaign.current_wave
    while wave + 1 < campaign.wave_count and all(j.final for j in view if j.wave <= wave):
        wave += 1
    if wave != campaign.current_wave:
        tick.current_wave = wave
    sent_recently = sum(1 for j in view if j.released_at is not None and now - j.released_at < RATE_WINDOW)
    budget = max(0, campaign.max_per_minute - sent_recently)
    waiting = sorted((j for j in view if j.waiting_to_send and j.wave <= wave), key=lambda j: (j.wave, j.id))
    tick.release = [j.id for j in waiting[:budget]]
    return tick


@dataclass(frozen=True)
class ReportVerdict:
    """What a device's status report does: the job's new state, or why the report is refused."""

    accepted: bool
    state: str = ""
    substate: str | None = None
    requeue: bool = False  # failed with attempts left: back to queued for another delivery
    reason: str = ""


def judge_report(
    job: JobView, campaign_state: str, target_version: str, retries: int, report: StatusReport
) -> ReportVerdict:
    """Judge a parsed status report against the job it names (already checked to be the sender's own)."""
    if job.final:
        return ReportVerdict(False, reason=f"job {job.id} is already {job.state}")
    if job.released_at is None:
        return ReportVerdict(False, reason=f"job {job.id} has not been sent (attempt {job.attempt} is over)")
    if report.attempt != job.attempt:
        return ReportVerdict(False, reason=f"report for attempt {report.attempt}, the job is on attempt {job.attempt}")
    if report.state == "in_progress":
        return ReportVerdict(True, "in_progress", report.substate)
    if report.state == "succeeded":
        if report.version != target_version:
            return ReportVerdict(
                True, "failed", reason=f"reported success while running {report.version}, not {target_version}"
            )
        return ReportVerdict(True, "succeeded")
    if report.state == "failed" and campaign_state in ACTIVE_CAMPAIGN_STATES and job.attempt <= retries:
        return ReportVerdict(True, "queued", requeue=True, reason=report.reason)
    return ReportVerdict(True, report.state, reason=report.reason)
