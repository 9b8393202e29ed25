"""Mitigation on a real data dir (no broker: the policy engine decides what the thing may do), through
the CLI: what quarantine takes away and what undo gives back, and what is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from thingward.audit.mitigate import QUARANTINE_POLICY_DOCUMENT
from thingward.audit.model import finding_id
from thingward.cli.main import app
from thingward.platform import Platform, cli_actor
from thingward.policy.engine import PolicyEngine
from thingward.registry import policies, things
from thingward.registry.audit_log import list_events
from thingward.registry.models import Thing

STALE = finding_id("STALE_DEVICE", "thing:cam1")
WIDE = {"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/x"]}]}
runner = CliRunner()


@pytest.fixture
def data(platform: Platform) -> str:
    """cam1 in two groups with a policy of its own, not seen for 60 days (a STALE_DEVICE finding)."""
    actor = cli_actor()
    with platform.db.session() as session:
        things.add_group(session, actor, "cams")
        things.add_thing(session, actor, "cam1", groups=["default", "cams"])
        things.add_thing(session, actor, "cam2")
        policies.add_policy(session, actor, "special", json.dumps(WIDE))
        policies.attach_policy(session, actor, "special", thing="cam1")
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
        session.execute(update(Thing).where(Thing.name == "cam1").values(created_at=old))
    return str(platform.settings.data_dir)


def cli(data: str, *args: str, code: int = 0) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--data-dir", data, "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def engine(data: str) -> PolicyEngine:
    platform = Platform.open(data)
    try:
        with platform.db.read() as session:
            return PolicyEngine(policies.load_policy_world(session))
    finally:
        platform.close()


def groups_of(data: str, name: str) -> list[str]:
    platform = Platform.open(data)
    try:
        with platform.db.read() as session:
            return sorted(g.name for g in things.get_thing(session, name).groups)
    finally:
        platform.close()


def test_quarantine_takes_groups_and_own_policies_and_undo_gives_them_back(data: str) -> None:
    assert engine(data).authorize("cam1", "publish", "things/cam1/telemetry")
    done = cli(data, "audit", "mitigate", STALE, "--action", "quarantine")
    assert done["groups"] == ["cams", "default"] and done["policies"] == ["special"]
    assert groups_of(data, "cam1") == ["quarantine"]
    quarantined = engine(data)
    assert quarantined.authorize("cam1", "connect", "cam1")
    assert quarantined.authorize("cam1", "subscribe", "things/cam1/commands/#")
    assert quarantined.authorize("cam1", "receive", "things/cam1/update/firmware")
    assert quarantined.authorize("cam1", "publish", "things/cam1/update/status")
    for action, topic in [
        ("publish", "things/cam1/telemetry"),
        ("publish", "things/cam1/x"),  # the policy attached to the thing alone is gone too
        ("publish", "things/cam1/events/motion"),
        ("subscribe", "things/cam2/commands/#"),
        ("receive", "things/cam2/update/firmware"),
    ]:
        assert not quarantined.authorize("cam1", action, topic), (action, topic)
    assert quarantined.authorize("cam2", "publish", "things/cam2/telemetry")  # others are untouched

    undone = cli(data, "audit", "mitigate", STALE, "--action", "quarantine", "--undo")
    assert undone["groups"] == ["cams", "default"] and undone["policies"] == ["special"]
    assert groups_of(data, "cam1") == ["cams", "default"]
    assert engine(data).authorize("cam1", "publish", "things/cam1/x")
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine", "--undo", code=1)  # nothing left to undo


def test_quarantine_twice_is_refused_and_a_widened_quarantine_policy_is_put_back(data: str, tmp_path: Path) -> None:
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine")
    again = cli(data, "audit", "mitigate", STALE, "--action", "quarantine", code=1)
    assert "in quarantine already" in again["error"]
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine", "--undo")
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["#"]}]}))
    cli(data, "policy", "update", "quarantine", str(wide))
    cli(data, "policy", "add", "extra", str(wide))
    cli(data, "policy", "attach", "extra", "--group", "quarantine")
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine")
    assert cli(data, "policy", "show", "quarantine")["document"] == json.loads(QUARANTINE_POLICY_DOCUMENT.to_json())
    assert not engine(data).authorize("cam1", "publish", "things/cam1/telemetry")


def test_every_mitigation_is_in_the_audit_log(data: str) -> None:
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine")
    cli(data, "audit", "mitigate", STALE, "--action", "quarantine", "--undo")
    cli(data, "audit", "mitigate", STALE, "--action", "revoke")
    platform = Platform.open(data)
    try:
        with platform.db.read() as session:
            logged = [(e.action, e.target, json.loads(e.detail)) for e in list_events(session, 1000)]
    finally:
        platform.close()
    mine = [(a, t, d.get("action")) for a, t, d in logged if a.startswith("audit.mitigate")]
    assert mine == [
        ("audit.mitigate", "thing:cam1", "revoke"),
        ("audit.mitigate.undo", "thing:cam1", "quarantine"),
        ("audit.mitigate", "thing:cam1", "quarantine"),
    ]
    assert ("thing.revoke", "thing:cam1") in [(a, t) for a, t, _ in logged]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([STALE, "--action", "revoke", "--undo"], "cannot be made valid again"),
        ([STALE, "--action", "delete"], "unknown action"),
        (["0123456789", "--action", "quarantine"], "no finding"),
        ([finding_id("POLICY_ON_SINGLE_THING", "policy:special"), "--action", "quarantine"], "not a thing"),
        ([STALE, "--action", "disable", "--undo"], "nothing to undo"),
    ],
)
def test_mitigations_that_cannot_apply_are_refused_and_change_nothing(data: str, args: list[str], says: str) -> None:
    refused = cli(data, "audit", "mitigate", *args, code=1)
    assert says in refused["error"]
    assert groups_of(data, "cam1") == ["cams", "default"]
