"""Finding ids, suppressions (reason and expiry mandatory, capped, recorded in the audit log, lapsing)
and stored history (new and resolved since the last run), through the CLI on a real data dir.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from thingward.audit import checks
from thingward.audit.model import finding_id
from thingward.audit.suppress import Suppression, apply_suppressions
from thingward.cli.main import app
from thingward.platform import Platform, cli_actor
from thingward.registry.audit_log import list_events
from thingward.registry.audit_records import add_suppression

from .test_checks import NOW, snapshot

DAY = dt.timedelta(days=1)
CA_KEY = finding_id("CA_KEY_UNENCRYPTED", "ca")
PLAINTEXT = finding_id("PLAINTEXT_LISTENER", "config:mqtt.plaintext_port")
runner = CliRunner()


@pytest.fixture
def data(tmp_path: Path) -> str:
    path = str(tmp_path / "d")
    assert runner.invoke(app, ["init", "--data-dir", path]).exit_code == 0
    return path


def cli(data: str, *args: str, env: dict[str, str] | None = None, code: int = 0) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--data-dir", data, "--json"], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def events(data: str, action: str) -> list[dict[str, Any]]:
    platform = Platform.open(data)
    try:
        with platform.db.read() as session:
            return [json.loads(e.detail) for e in list_events(session, 1000) if e.action == action]
    finally:
        platform.close()


def test_finding_ids_are_short_stable_and_differ_by_check_and_resource() -> None:
    assert finding_id("STALE_DEVICE", "thing:cam1") == finding_id("STALE_DEVICE", "thing:cam1")
    assert len({finding_id("STALE_DEVICE", "thing:cam1"), finding_id("STALE_DEVICE", "thing:cam2")}) == 2
    assert finding_id("STALE_DEVICE", "thing:cam1") != finding_id("WEAK_DEVICE_KEY", "thing:cam1")
    assert len(CA_KEY) == 10 and int(CA_KEY, 16) >= 0


def test_every_output_carries_the_finding_id(data: str, tmp_path: Path) -> None:
    report = cli(data, "audit")
    ids = [f["id"] for c in report["checks"] for f in c["findings"]]
    assert ids == [CA_KEY]
    assert cli(data, "audit")["checks"] == report["checks"]  # the same on the next run
    page = tmp_path / "r.html"
    cli(data, "audit", "--html", str(page))
    assert CA_KEY in page.read_text()
    human = runner.invoke(app, ["audit", "--data-dir", data])
    assert CA_KEY in human.stdout


def test_a_suppressed_finding_is_shown_apart_and_no_longer_fails_the_gate(data: str, tmp_path: Path) -> None:
    assert runner.invoke(app, ["audit", "--data-dir", data, "--fail-on", "medium"]).exit_code == 1
    made = cli(data, "audit", "suppress", CA_KEY, "--reason", "lab machine, no HSM", "--for", "30d")
    assert made["check"] == "CA_KEY_UNENCRYPTED" and made["resource"] == "ca" and made["finding_id"] == CA_KEY
    report = cli(data, "audit", "--fail-on", "medium")  # exit 0 now
    assert report["summary"]["findings"]["medium"] == 0
    assert [(s["id"], s["suppression"]["reason"]) for s in report["suppressed"]] == [(CA_KEY, "lab machine, no HSM")]
    check = next(c for c in report["checks"] if c["id"] == "CA_KEY_UNENCRYPTED")
    assert check["status"] == "pass" and "suppressed" in check["note"]
    human = runner.invoke(app, ["audit", "--data-dir", data])
    assert "suppressed" in human.stdout and "lab machine" in human.stdout
    page = tmp_path / "r.html"
    cli(data, "audit", "--html", str(page))
    assert "Suppressed findings" in page.read_text() and "lab machine, no HSM" in page.read_text()
    assert events(data, "audit.suppress")[0]["reason"] == "lab machine, no HSM"
    listed = cli(data, "audit", "suppressions")["suppressions"]
    assert [(s["id"], s["expired"]) for s in listed] == [(made["id"], False)]
    cli(data, "audit", "unsuppress", str(made["id"]))
    assert events(data, "audit.unsuppress")[0]["check"] == "CA_KEY_UNENCRYPTED"
    cli(data, "audit", "--fail-on", "medium", code=1)
    assert cli(data, "audit", "suppressions")["suppressions"] == []


def test_a_whole_check_or_one_resource_of_it_can_be_suppressed(data: str) -> None:
    cli(data, "audit", "suppress", "CA_KEY_UNENCRYPTED", "--resource", "thing:other", "--reason", "x", "--for", "1d")
    assert cli(data, "audit")["summary"]["findings"]["medium"] == 1  # another resource: still counts
    cli(data, "audit", "suppress", "CA_KEY_UNENCRYPTED", "--reason", "all of it", "--expires", "2099-01-01", code=1)
    cli(data, "audit", "suppress", "CA_KEY_UNENCRYPTED", "--reason", "all of it", "--for", "2w")
    assert cli(data, "audit")["summary"]["findings"]["medium"] == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--for", "30d"], "reason"),
        (["--reason", "   ", "--for", "30d"], "reason"),
        (["--reason", "r"], "--expires"),
        (["--reason", "r", "--for", "30d", "--expires", "2099-01-01"], "--expires"),
        (["--reason", "r", "--for", "400d"], "at most 365 days"),
        (["--reason", "r", "--expires", "2001-01-01"], "in the past"),
        (["--reason", "r", "--expires", "next tuesday"], "YYYY-MM-DD"),
        (["--reason", "r", "--for", "forever"], "a number and a unit"),
    ],
)
def test_a_suppression_without_reason_or_bounded_expiry_is_refused(data: str, args: list[str], says: str) -> None:
    refused = cli(data, "audit", "suppress", CA_KEY, *args, code=1)
    assert says in refused["error"]
    assert cli(data, "audit", "suppressions")["suppressions"] == []
    assert events(data, "audit.suppress") == []


@pytest.mark.parametrize(
    ("target", "says"), [("NO_SUCH_CHECK", "no check"), ("0123456789", "no finding"), ("cam 1", "neither")]
)
def test_suppressing_something_unknown_is_refused(data: str, target: str, says: str) -> None:
    refused = cli(data, "audit", "suppress", target, "--reason", "r", "--for", "1d", code=1)
    assert says in refused["error"]


def test_an_expired_suppression_stops_applying_and_is_reported(data: str) -> None:
    platform = Platform.open(data)
    try:
        with platform.db.session() as session:
            long_ago = dt.datetime.now(dt.UTC) - 10 * DAY
            add_suppression(session, cli_actor(), "CA_KEY_UNENCRYPTED", None, "old", long_ago + DAY, now=long_ago)
    finally:
        platform.close()
    report = cli(data, "audit", "--fail-on", "medium", code=1)
    assert report["summary"]["findings"]["medium"] == 1 and report["suppressed"] == []
    assert [s["reason"] for s in report["expired_suppressions"]] == ["old"]
    assert "expired" in runner.invoke(app, ["audit", "--data-dir", data]).stdout
    assert cli(data, "audit", "suppressions")["suppressions"][0]["expired"] is True


def test_apply_suppressions_is_exact_about_check_resource_and_time() -> None:
    results = checks.run_checks(snapshot(plaintext_port=1883, ca_key_encrypted=False))
    on_plaintext = Suppression(1, "PLAINTEXT_LISTENER", "config:mqtt.plaintext_port", "r", NOW, "t", NOW + DAY)
    other_resource = Suppression(2, "CA_KEY_UNENCRYPTED", "thing:cam1", "r", NOW, "t", NOW + DAY)
    lapsed = Suppression(3, "CA_KEY_UNENCRYPTED", None, "r", NOW - 2 * DAY, "t", NOW)
    applied = apply_suppressions(results, [on_plaintext, other_resource, lapsed], NOW)
    assert [t.id for t in applied.suppressed] == [PLAINTEXT]
    assert [s.id for s in applied.expired] == [3]
    failing = {r.info.id for r in applied.results if r.status == "fail"}
    assert failing == {"CA_KEY_UNENCRYPTED"}


def test_history_says_what_is_new_and_what_was_resolved(data: str, tmp_path: Path) -> None:
    first = cli(data, "audit", "--save")
    assert first["changes"] is None and first["saved_run"] == 1
    plaintext = {"THINGWARD_MQTT__PLAINTEXT_PORT": "1883"}
    human = runner.invoke(app, ["audit", "--data-dir", data], env=plaintext).stdout
    assert "since run 1" in human and "1 new, 0 resolved" in human
    page = tmp_path / "r.html"
    second = cli(data, "audit", "--save", "--html", str(page), env=plaintext)
    assert [f["id"] for f in second["changes"]["new"]] == [PLAINTEXT]
    assert second["changes"]["resolved"] == [] and second["changes"]["previous_run"]["id"] == 1
    assert f"[{PLAINTEXT}]</span> <b>new</b>" in page.read_text()
    third = cli(data, "audit")  # not saved: compared with run 2
    assert [f["check"] for f in third["changes"]["resolved"]] == ["PLAINTEXT_LISTENER"]
    assert third["changes"]["new"] == [] and "saved_run" not in third
    runs = cli(data, "audit", "history")["runs"]
    assert [r["id"] for r in runs] == [2, 1]
    assert runs[0]["summary"]["findings"]["high"] == 1 and runs[0]["triggered_by"].startswith("cli:")


def test_history_keeps_only_the_newest_runs(data: str) -> None:
    keep = {"THINGWARD_AUDIT__KEEP_RUNS": "2"}
    for _ in range(3):
        cli(data, "audit", "--save", env=keep)
    assert [r["id"] for r in cli(data, "audit", "history")["runs"]] == [3, 2]


def test_old_invocations_keep_working(data: str, tmp_path: Path) -> None:
    report = cli(data, "audit", "--expiry-days", "5", "--stale-days", "5")
    assert set(report) >= {"generated_at", "summary", "checks"}
    assert report["summary"]["checks"]["fail"] == 1
    assert runner.invoke(app, ["audit", "--data-dir", data, "--fail-on", "high"]).exit_code == 0
    assert runner.invoke(app, ["audit", "--data-dir", data, "--fail-on", "medium"]).exit_code == 1
    assert runner.invoke(app, ["audit", "--help"]).exit_code == 0
