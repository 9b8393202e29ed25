"""Rollout campaigns in the registry, driven by a clock of the test's own: the scheduler's ticks, devices'
reports, operator actions, and what each writes to the audit log."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path

import pytest

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.ota import firmware, rollout
from thingward.ota.job_protocol import StatusReport, parse_job_document
from thingward.ota.repository import OtaRepository
from thingward.platform import Platform
from thingward.registry import device_state, things
from thingward.registry.audit_log import Actor, list_events
from thingward.registry.device_state import StateReport

pytestmark = pytest.mark.both_databases

ACTOR = Actor("operator", "pytest")
T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def _fleet(
    platform: Platform, count: int, version: str = "1.0.0", model: str = "cam", group: str = "cams"
) -> list[str]:
    names = [f"{model}-{i:03d}" for i in range(count)]
    with platform.db.session() as session:
        with contextlib.suppress(ConflictError):
            things.add_group(session, ACTOR, group)
        for name in names:
            thing = things.add_thing(session, ACTOR, name, [group])
            session.flush()
            device_state.store_report(session, thing.id, StateReport(model, version, (), (), "provisioned", None), T0)
    return names


def _publish(platform: Platform, repo: OtaRepository, tmp_path: Path, version: str, model: str = "cam") -> None:
    image = tmp_path / f"{model}-{version}.img"
    image.write_bytes(f"{model} firmware {version}".encode() * 100)
    with platform.db.session() as session:
        firmware.publish_image(session, repo, ACTOR, image, model, version)


def _tick(platform: Platform, now: dt.datetime) -> list[rollout.Delivery]:
    with platform.db.session() as session:
        rollout.run_tick(session, now)
        return rollout.take_deliveries(session)


def _report(
    platform: Platform, thing: str, job_id: int, attempt: int, state: str, now: dt.datetime, **kw: str
) -> rollout.ReportOutcome:
    with platform.db.session() as session:
        return rollout.record_status(session, thing, StatusReport(job_id, attempt, state, **kw), now)


def _show(platform: Platform, campaign_id: int) -> rollout.CampaignSummary:
    with platform.db.read() as session:
        return rollout.get_rollout(session, campaign_id)


def _finish_sent(
    platform: Platform,
    deliveries: list[rollout.Delivery],
    now: dt.datetime,
    state: str = "succeeded",
    version: str = "1.1.0",
) -> None:
    for delivery in deliveries:
        doc = delivery.document
        if doc is None or doc.operation != "update":
            continue
        _report(platform, delivery.thing, doc.job_id, doc.attempt, "in_progress", now, substate="downloading")
        outcome = _report(platform, delivery.thing, doc.job_id, doc.attempt, state, now, version=version)
        assert outcome.accepted, outcome.reason


def _actions(platform: Platform) -> list[str]:
    with platform.db.read() as session:
        return [e.action for e in reversed(list_events(session, 1000, None)) if e.action.startswith("rollout.")]


def test_waves_advance_only_when_the_previous_wave_finished(
    platform: Platform, repo: OtaRepository, tmp_path: Path
) -> None:
    _fleet(platform, 20)
    _publish(platform, repo, tmp_path, "1.1.0")
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", now=T0)
    assert (created.total, created.wave_sizes) == (20, (1, 1, 8, 10))
    now = T0
    sent = _tick(platform, now)
    assert len(sent) == 1
    doc = parse_job_document(sent[0].payload)
    assert (doc.operation, doc.version, doc.target, doc.attempt) == ("update", "1.1.0", "cam/1.1.0.img", 1)
    assert _tick(platform, now + dt.timedelta(seconds=1)) == []  # the canary has not finished
    seen = {sent[0].thing}
    for wave_size in (1, 8, 10):
        _finish_sent(platform, sent, now)
        now += dt.timedelta(seconds=1)
        sent = [d for d in _tick(platform, now) if d.document is not None]
        assert len(sent) == wave_size
        seen |= {d.thing for d in sent}
    _finish_sent(platform, sent, now)
    _tick(platform, now + dt.timedelta(seconds=1))
    shown = _show(platform, created.id)
    assert shown.state == "completed"
    assert shown.counts == {"succeeded": 20}
    assert len(seen) == 20
    assert _actions(platform) == ["rollout.create", "rollout.wave", "rollout.wave", "rollout.wave", "rollout.complete"]


def test_rate_limit_holds_within_a_wave(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 10)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,), max_per_minute=4, timeout_seconds=3600)
    with platform.db.session() as session:
        rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    assert len(_tick(platform, T0)) == 4
    assert len(_tick(platform, T0 + dt.timedelta(seconds=30))) == 0
    assert len(_tick(platform, T0 + dt.timedelta(seconds=60))) == 4
    assert len(_tick(platform, T0 + dt.timedelta(seconds=120))) == 2


def test_timeout_retries_then_times_out_and_tells_the_device(
    platform: Platform, repo: OtaRepository, tmp_path: Path
) -> None:
    _fleet(platform, 1)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,), timeout_seconds=30, retries=1)
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    first = parse_job_document(_tick(platform, T0)[0].payload)
    again = parse_job_document(_tick(platform, T0 + dt.timedelta(seconds=30))[0].payload)
    assert (first.attempt, again.attempt, again.job_id) == (1, 2, first.job_id)
    # A late report of the first attempt changes nothing.
    late = _report(platform, "cam-000", first.job_id, 1, "succeeded", T0 + dt.timedelta(seconds=31), version="1.1.0")
    assert not late.accepted
    last = _tick(platform, T0 + dt.timedelta(seconds=60))
    assert [parse_job_document(d.payload).operation for d in last] == ["cancel"]
    shown = _show(platform, created.id)
    assert (shown.state, shown.counts) == ("completed", {"timed_out": 1})
    assert shown.jobs[0].attempt == 2


def test_failed_report_is_retried_then_final(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 1)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,), retries=1, abort_min_finished=5)
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    doc = parse_job_document(_tick(platform, T0)[0].payload)
    assert _report(platform, "cam-000", doc.job_id, 1, "failed", T0, reason="download broke off").state == "queued"
    doc = parse_job_document(_tick(platform, T0)[0].payload)
    assert doc.attempt == 2
    assert _report(platform, "cam-000", doc.job_id, 2, "failed", T0, reason="again").state == "failed"
    cleared = _tick(platform, T0)
    assert [d.payload for d in cleared] == [b""]  # the retained document is cleared
    assert _show(platform, created.id).state == "completed"


def test_enough_failures_abort_and_cancel_the_queued(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 20)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(10, 100), retries=0, abort_failure_percent=50, abort_min_finished=2)
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    sent = _tick(platform, T0)
    assert len(sent) == 2
    _finish_sent(platform, sent, T0, state="failed")
    after = _tick(platform, T0 + dt.timedelta(seconds=1))
    assert after == [] or all(d.document is None for d in after)
    shown = _show(platform, created.id)
    assert shown.state == "aborted"
    assert shown.counts == {"failed": 2, "canceled": 18}
    assert "2 of 2 finished devices failed" in shown.reason
    assert _actions(platform)[-1] == "rollout.abort"


def test_pause_resume_and_cancel(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 6)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,), max_per_minute=2, timeout_seconds=3600)
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    first = _tick(platform, T0)
    with platform.db.session() as session:
        rollout.pause_rollout(session, ACTOR, created.id)
    assert _tick(platform, T0 + dt.timedelta(minutes=2)) == []
    with platform.db.session() as session, pytest.raises(ConflictError, match="only a running rollout"):
        rollout.pause_rollout(session, ACTOR, created.id)
    # A job sent before the pause still reports and finishes.
    _finish_sent(platform, first[:1], T0 + dt.timedelta(minutes=2))
    with platform.db.session() as session:
        rollout.resume_rollout(session, ACTOR, created.id)
    assert len([d for d in _tick(platform, T0 + dt.timedelta(minutes=3)) if d.document is not None]) == 2
    with platform.db.session() as session:
        rollout.cancel_rollout(session, ACTOR, created.id, now=T0 + dt.timedelta(minutes=3))
    told = _tick(platform, T0 + dt.timedelta(minutes=3))
    # The three devices that hold a document (one sent before the pause, two after) hear it is off.
    assert sorted(parse_job_document(d.payload).operation for d in told) == ["cancel"] * 3
    shown = _show(platform, created.id)
    assert shown.state == "canceled"
    assert shown.counts == {"succeeded": 1, "canceled": 5}
    assert _actions(platform) == ["rollout.create", "rollout.pause", "rollout.resume", "rollout.cancel"]
    with platform.db.session() as session, pytest.raises(ConflictError, match="canceled already"):
        rollout.cancel_rollout(session, ACTOR, created.id)


def test_a_status_for_another_things_job_is_refused(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 2)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,))
    with platform.db.session() as session:
        created = rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    sent = {d.thing: parse_job_document(d.payload) for d in _tick(platform, T0)}
    victim = sent["cam-001"]
    forged = _report(platform, "cam-000", victim.job_id, victim.attempt, "failed", T0, reason="forged")
    assert not forged.accepted
    assert forged.reason == f"job {victim.job_id} is not a job of cam-000"
    assert not _report(platform, "cam-000", 999_999, 1, "failed", T0).accepted
    assert {j.thing: j.state for j in _show(platform, created.id).jobs} == {"cam-000": "queued", "cam-001": "queued"}


def test_create_refuses_what_cannot_run(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    _fleet(platform, 2)
    _publish(platform, repo, tmp_path, "1.1.0")
    with platform.db.session() as session, pytest.raises(NotFoundError, match="is not published"):
        rollout.create_rollout(session, ACTOR, "cam", "1.2.0", "cams")
    _publish(platform, repo, tmp_path, "1.1.0", model="other")
    with platform.db.session() as session, pytest.raises(InvalidInputError, match="no device of model other"):
        rollout.create_rollout(session, ACTOR, "other", "1.1.0", "cams")
    with platform.db.session() as session, pytest.raises(InvalidInputError, match="the last 100"):
        rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", rollout.RolloutOptions(waves=(10, 50)))
    with platform.db.session() as session:
        rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams")
    with platform.db.session() as session, pytest.raises(ConflictError, match="already have an unfinished rollout"):
        rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams")


def test_fix_targets_the_affected_devices_with_the_first_fixed_version(
    platform: Platform, repo: OtaRepository, tmp_path: Path
) -> None:
    _fleet(platform, 3, version="1.4.0")
    with platform.db.session() as session:
        for name, version in (("cam-000", "1.4.2"), ("cam-001", "1.3.9")):
            thing = things.get_thing(session, name)
            device_state.store_report(session, thing.id, StateReport("cam", version, (), (), "provisioned", None), T0)
        device_state.add_advisory(session, ACTOR, "CVE-2026-0001", "cam", ">=1.3,<1.4.2", "high")
    for version in ("1.4.1", "1.4.2", "1.4.3", "1.5.0"):
        _publish(platform, repo, tmp_path, version)
    with platform.db.session() as session:
        created = rollout.create_fix_rollout(session, ACTOR, "CVE-2026-0001", rollout.RolloutOptions(waves=(100,)))
    shown = _show(platform, created.id)
    assert (shown.version, shown.advisory_id) == ("1.4.2", "CVE-2026-0001")
    assert sorted(j.thing for j in shown.jobs) == ["cam-001", "cam-002"]
    with platform.db.read() as session:
        event = next(iter(list_events(session, 10, f"rollout:{created.id}")))
    assert json.loads(event.detail)["advisory"] == "CVE-2026-0001"


def test_fix_without_a_fixed_version_says_what_to_publish(
    platform: Platform, repo: OtaRepository, tmp_path: Path
) -> None:
    _fleet(platform, 1, version="1.4.0")
    _publish(platform, repo, tmp_path, "1.4.1")
    with platform.db.session() as session:
        device_state.add_advisory(session, ACTOR, "CVE-2026-0002", "cam", "<1.5", "critical")
    with platform.db.session() as session, pytest.raises(NotFoundError, match="publish a fixed one"):
        rollout.create_fix_rollout(session, ACTOR, "CVE-2026-0002")


def test_a_restarted_server_finds_every_document_devices_should_hold(
    platform: Platform, repo: OtaRepository, tmp_path: Path
) -> None:
    _fleet(platform, 3)
    _publish(platform, repo, tmp_path, "1.1.0")
    options = rollout.RolloutOptions(waves=(100,), max_per_minute=2, timeout_seconds=3600)
    with platform.db.session() as session:
        rollout.create_rollout(session, ACTOR, "cam", "1.1.0", "cams", options, now=T0)
    sent = _tick(platform, T0)
    _finish_sent(platform, sent[:1], T0)
    with platform.db.read() as session:
        pending = rollout.pending_documents(session)
    # The finished one holds nothing, the other sent one its job, the third was never sent.
    assert [(d.thing, d.document) for d in pending] == [(sent[1].thing, sent[1].document)]


def test_the_servers_sink_keeps_only_well_formed_reports_a_thing_made_about_itself(platform: Platform) -> None:
    from thingward.broker.base import InboundMessage
    from thingward.ota.rollout_scheduler import RolloutScheduler

    scheduler = RolloutScheduler(platform.db)
    good = StatusReport(1, 1, "in_progress", "downloading").to_payload()
    for thing, topic, payload in (
        ("cam-000", "things/cam-001/update/status", good),  # another thing's topic (a loose custom policy)
        ("cam-000", "things/cam-000/update/status", b'{"job_id": 1, "attempt": 1, "state": "queued"}'),
        ("cam-000", "things/cam-000/update/status", b"x" * 5000),
        ("cam-000", "things/cam-000/update/status", b"\xff\xfe"),
    ):
        scheduler.on_message(InboundMessage(thing, topic, payload, 1, False))
    assert scheduler.refused == 4
    scheduler.on_message(InboundMessage("cam-000", "things/cam-000/telemetry", good, 1, False))  # not a report
    scheduler.on_message(InboundMessage("cam-000", "things/cam-000/update/status", good, 1, False))
    assert (scheduler.refused, len(scheduler._reports)) == (4, 1)
    for _ in range(100):  # a flood: bounded per thing and tick, other things unaffected
        scheduler.on_message(InboundMessage("cam-000", "things/cam-000/update/status", good, 1, False))
    scheduler.on_message(InboundMessage("cam-001", "things/cam-001/update/status", good, 1, False))
    assert len(scheduler._reports) == 21
    assert scheduler.dropped == 81


def test_the_rollout_commands(platform: Platform, repo: OtaRepository, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from thingward.cli.main import app

    _fleet(platform, 3)
    _publish(platform, repo, tmp_path, "1.1.0")
    data_dir = str(platform.settings.data_dir)

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, [*args, "--data-dir", data_dir])
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return result.stdout + result.stderr

    created = json.loads(
        run("ota", "rollout", "create", "--model", "cam", "--version", "1.1.0", "--group", "cams", "--json")
    )
    campaign = str(created["id"])
    assert json.loads(run("ota", "rollout", "pause", campaign, "--json"))["state"] == "paused"
    assert json.loads(run("ota", "rollout", "resume", campaign, "--json"))["state"] == "running"
    shown = run("ota", "rollout", "show", campaign, "--jobs")
    assert f"rollout {campaign}: cam 1.1.0" in shown and "cam-000" in shown
    assert json.loads(run("ota", "rollout", "cancel", campaign, "--json"))["counts"]["canceled"] == 3
    assert "cam" in run("ota", "rollout", "list")
    assert "leave out --model" in run("ota", "rollout", "create", "--fix", "X-1", "--model", "cam", code=1)
    assert "give --model, --version and --group" in run("ota", "rollout", "create", "--model", "cam", code=1)
    assert "--waves '1,x'" in run(
        *("ota", "rollout", "create", "--model", "cam", "--version", "1.1.0"),
        *("--group", "cams", "--waves", "1,x"),
        code=1,
    )
    assert "no rollout 99" in run("ota", "rollout", "show", "99", code=1)
    assert "--retries 11 is outside 0-10" in run(
        *("ota", "rollout", "create", "--model", "cam", "--version", "1.1.0"),
        *("--group", "cams", "--retries", "11"),
        code=1,
    )
