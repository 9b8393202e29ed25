"""The CLI contract: command names, JSON shapes, and one-line errors, run in-process through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thingward.cli.main import app

runner = CliRunner()


def run(data_dir: Path, *args: str, code: int = 0) -> dict:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir), "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.both_databases


@pytest.fixture
def data_dir(tmp_path: Path, database_url: str | None) -> Path:
    out = run(tmp_path / "d", "init", *(["--database-url", database_url] if database_url else []))
    assert out == {
        "data_dir": str((tmp_path / "d").resolve()),
        "ca_certificate": str((tmp_path / "d").resolve() / "pki" / "ca.crt"),
    }
    return tmp_path / "d"


def test_device_add_contract(data_dir: Path) -> None:
    out = run(data_dir, "device", "add", "cam1")
    assert set(out) == {"name", "enrollment_token", "expires_at"}
    assert out["name"] == "cam1" and out["enrollment_token"].startswith("cam1.")


def test_group_inheritance_and_explain_through_the_cli(data_dir: Path, tmp_path: Path) -> None:
    run(data_dir, "group", "add", "site")
    run(data_dir, "group", "add", "cams", "--parent", "site")
    run(data_dir, "device", "add", "cam1", "--group", "cams")
    policy = tmp_path / "site.json"
    policy.write_text(
        json.dumps(
            {
                "statements": [
                    {
                        "sid": "site-status",
                        "effect": "allow",
                        "actions": ["publish"],
                        "resources": ["sites/${group.name}/status"],
                    },
                    {"sid": "no-debug", "effect": "deny", "actions": ["publish"], "resources": ["things/+/debug"]},
                ]
            }
        )
    )
    assert run(data_dir, "policy", "add", "site-policy", str(policy)) == {"name": "site-policy", "version": 1}
    run(data_dir, "group", "attach-policy", "site", "site-policy")
    allowed = run(data_dir, "policy", "explain", "cam1", "publish", "sites/site/status")
    assert allowed["decision"] == "allow"
    assert [(s["policy"], s["attached_to"]) for s in allowed["statements"]] == [("site-policy", "group:site")]
    denied = run(data_dir, "policy", "explain", "cam1", "publish", "things/cam1/debug")
    assert denied["decision"] == "deny"
    assert {s["sid"] for s in denied["statements"] if s["effect"] == "deny"} == {"no-debug"}
    who = run(data_dir, "policy", "who-can", "publish", "sites/site/status")
    assert [t["thing"] for t in who["things"]] == ["cam1"]


def test_bad_policy_json_is_refused_with_location_and_nothing_stored(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"statements": [{"effect": "allow", "actions": ["pub"], "resources": ["a"]}]}')
    out = run(data_dir, "policy", "add", "bad", str(bad), code=1)
    assert "statements[0].actions[0]" in out["error"] and "pub" in out["error"]
    assert [p["name"] for p in run(data_dir, "policy", "list")["policies"]] == ["default-device"]


def test_lint_reports_policy_attached_to_a_single_thing(data_dir: Path, tmp_path: Path) -> None:
    run(data_dir, "device", "add", "cam1")
    assert run(data_dir, "policy", "lint")["findings"] == []
    extra = tmp_path / "extra.json"
    extra.write_text(
        json.dumps(
            {"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/extra"]}]}
        )
    )
    run(data_dir, "policy", "add", "extra", str(extra))
    run(data_dir, "policy", "attach", "extra", "--thing", "cam1")
    codes = {f["code"] for f in run(data_dir, "policy", "lint")["findings"]}
    assert "policy-attached-to-thing" in codes
    run(data_dir, "policy", "attach", "extra", "--group", "default", "--thing", "cam1", code=1)


def test_group_depth_and_unknown_names_are_clear_errors(data_dir: Path) -> None:
    assert "no thing group named 'nope'" in run(data_dir, "device", "add", "cam1", "--group", "nope", code=1)["error"]
    assert "invalid thing name" in run(data_dir, "device", "add", "Cam 1", code=1)["error"]


def test_audit_log_lists_changes_and_verifies(data_dir: Path) -> None:
    run(data_dir, "device", "add", "cam1")
    events = run(data_dir, "log", "list")["events"]
    assert events[0]["action"] == "thing.enrollment_token" and events[1]["action"] == "thing.add"
    assert run(data_dir, "log", "verify") == {"intact": True, "first_bad_event": None}


def test_help_lists_every_noun() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for noun in ("init", "serve", "demo", "simulate", "device", "group", "policy", "log"):
        assert noun in result.stdout
