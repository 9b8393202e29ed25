"""The rollout decisions on their own: waves, rate, timeouts and retries, abort, pause, and report judging."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from thingward.errors import InvalidInputError
from thingward.ota.job_protocol import StatusReport, parse_status_report
from thingward.ota.rollout_engine import CampaignView, JobView, decide, judge_report, plan_waves

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def campaign(**changes: object) -> CampaignView:
    base = CampaignView(
        id=1,
        state="running",
        current_wave=0,
        wave_count=3,
        max_per_minute=100,
        abort_failure_percent=50,
        abort_min_finished=2,
        timeout=dt.timedelta(seconds=60),
        retries=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def jobs(waves: list[int]) -> list[JobView]:
    return [JobView(i + 1, w, "queued", 0, None) for i, w in enumerate(waves)]


@pytest.mark.parametrize(
    ("count", "waves", "sizes"),
    [
        (200, (1, 10, 50, 100), [2, 18, 80, 100]),
        (20, (1, 10, 50, 100), [1, 1, 8, 10]),
        (3, (1, 10, 50, 100), [1, 1, 1]),
        (1, (1, 10, 50, 100), [1]),
        (10, (100,), [10]),
    ],
)
def test_waves_split_the_fleet_with_a_canary_of_at_least_one(
    count: int, waves: tuple[int, ...], sizes: list[int]
) -> None:
    plan = plan_waves(count, waves)
    assert len(plan) == count
    assert [plan.count(w) for w in range(max(plan) + 1)] == sizes
    assert plan == sorted(plan)


def test_only_the_first_wave_is_released_until_it_finished() -> None:
    fleet = jobs([0, 1, 1, 2, 2])
    tick = decide(campaign(), fleet, T0)
    assert tick.release == [1]
    assert tick.current_wave is None
    sent = [replace(fleet[0], state="in_progress", attempt=1, released_at=T0), *fleet[1:]]
    assert decide(campaign(), sent, T0).release == []  # wave 1 waits for the canary
    done = [replace(sent[0], state="succeeded"), *fleet[1:]]
    tick = decide(campaign(), done, T0)
    assert (tick.current_wave, tick.release) == (1, [2, 3])


def test_release_rate_holds_over_a_sliding_minute() -> None:
    fleet = jobs([0] * 10)
    view = campaign(wave_count=1, max_per_minute=3, timeout=dt.timedelta(minutes=10))
    first = decide(view, fleet, T0)
    assert first.release == [1, 2, 3]
    fleet = [replace(j, attempt=1, released_at=T0) if j.id in first.release else j for j in fleet]
    assert decide(view, fleet, T0 + dt.timedelta(seconds=59)).release == []
    assert decide(view, fleet, T0 + dt.timedelta(seconds=60)).release == [4, 5, 6]


def test_an_overdue_job_is_retried_then_timed_out() -> None:
    view = campaign(wave_count=1)
    job = JobView(1, 0, "in_progress", 1, T0)
    assert decide(view, [job], T0 + dt.timedelta(seconds=59)).empty
    tick = decide(view, [job], T0 + dt.timedelta(seconds=60))
    assert tick.retry == [1]
    assert tick.release == [1]  # sent again in the same tick, as attempt 2
    second = JobView(1, 0, "queued", 2, T0 + dt.timedelta(seconds=60))
    tick = decide(view, [second], T0 + dt.timedelta(seconds=120))
    assert (tick.retry, tick.time_out) == ([], [1])


def test_abort_cancels_every_queued_job_and_leaves_running_ones() -> None:
    fleet = [
        JobView(1, 0, "failed", 1, T0),
        JobView(2, 0, "failed", 1, T0),
        JobView(3, 1, "in_progress", 1, T0),
        JobView(4, 1, "queued", 1, T0),
        JobView(5, 2, "queued", 0, None),
    ]
    tick = decide(campaign(), fleet, T0)
    assert tick.campaign_state == "aborted"
    assert "2 of 2 finished devices failed" in tick.reason
    assert tick.cancel == [4, 5]
    assert tick.release == []


def test_abort_waits_for_the_minimum_finished() -> None:
    fleet = [JobView(1, 0, "failed", 1, T0), JobView(2, 0, "in_progress", 1, T0), JobView(3, 1, "queued", 0, None)]
    assert decide(campaign(abort_min_finished=2), fleet, T0).campaign_state is None
    ok = [JobView(1, 0, "succeeded", 1, T0), JobView(2, 0, "succeeded", 1, T0), JobView(3, 0, "failed", 1, T0)]
    assert decide(campaign(wave_count=1), [*ok, JobView(4, 0, "queued", 0, None)], T0).campaign_state is None


def test_a_paused_campaign_releases_nothing_but_still_times_out() -> None:
    fleet = [JobView(1, 0, "in_progress", 2, T0), JobView(2, 0, "queued", 0, None)]
    tick = decide(campaign(state="paused", wave_count=1), fleet, T0 + dt.timedelta(minutes=5))
    assert tick.release == []
    assert tick.time_out == [1]


def test_a_finished_campaign_completes() -> None:
    fleet = [JobView(1, 0, "succeeded", 1, T0), JobView(2, 1, "rejected", 1, T0)]
    tick = decide(campaign(abort_min_finished=5), fleet, T0)
    assert tick.campaign_state == "completed"


def test_a_report_for_an_old_attempt_or_a_finished_job_is_refused() -> None:
    sent = JobView(1, 0, "in_progress", 2, T0)
    assert not judge_report(sent, "running", "1.1.0", 1, StatusReport(1, 1, "failed")).accepted
    assert not judge_report(
        replace(sent, state="succeeded"), "running", "1.1.0", 1, StatusReport(1, 2, "failed")
    ).accepted
    assert not judge_report(
        replace(sent, released_at=None, state="queued"), "running", "1.1.0", 1, StatusReport(1, 2, "in_progress")
    ).accepted
    verdict = judge_report(sent, "running", "1.1.0", 1, StatusReport(1, 2, "succeeded", version="1.0.0"))
    assert (verdict.state, verdict.reason) == ("failed", "reported success while running 1.0.0, not 1.1.0")
    first = replace(sent, attempt=1)
    assert judge_report(first, "running", "1.1.0", 1, StatusReport(1, 1, "failed")).requeue
    assert not judge_report(first, "running", "1.1.0", 1, StatusReport(1, 1, "rejected")).requeue


@pytest.mark.parametrize(
    "payload",
    [
        b'{"job_id": 1, "attempt": 1, "state": "succeeded", "extra": 1}',
        b'{"job_id": 1, "attempt": 1, "state": "timed_out"}',
        b'{"job_id": 1, "attempt": 1, "state": "canceled"}',
        b'{"job_id": "1", "attempt": 1, "state": "failed"}',
        b'{"job_id": 1, "attempt": 1, "state": "failed", "substate": "downloading"}',
        b'{"job_id": 1, "attempt": 1, "state": "in_progress", "substate": "dancing"}',
        b'{"job_id": 1, "attempt": 1, "state": "failed", "reason": "a\\u0000b"}',
        b'{"job_id": 1, "attempt": 1, "state": "failed", "reason": "' + b"x" * 2000 + b'"}',
        b"[1, 2]",
        b"",
    ],
)
def test_status_reports_are_parsed_strictly(payload: bytes) -> None:
    with pytest.raises(InvalidInputError):
        parse_status_report(payload)


def test_a_good_status_report_parses() -> None:
    report = parse_status_report(b'{"job_id": 3, "attempt": 1, "state": "in_progress", "substate": "verifying"}')
    assert report == StatusReport(3, 1, "in_progress", "verifying")
