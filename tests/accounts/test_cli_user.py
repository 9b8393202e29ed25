"""`thingward user ...` through typer's runner, against a real data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from thingward.cli.main import app
from thingward.errors import ConfigError

runner = CliRunner()


def run(data_dir: Path, *args: str, code: int = 0, env: dict[str, str] | None = None) -> dict:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir), "--json"], env=env)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def cli_dir(tmp_path: Path) -> Path:
    run(tmp_path / "d", "init")
    return tmp_path / "d"


def test_add_admin_prints_a_strong_password_once_that_must_be_changed(cli_dir: Path) -> None:
    out = run(cli_dir, "user", "add", "Root@Example.com", "--admin")
    assert out["email"] == "root@example.com" and out["admin"] and out["must_change_password"]
    assert len(out["password"]) >= 24
    shown = run(cli_dir, "user", "show", "root@example.com")
    assert "password" not in shown and shown["requirements"] == ["change_password", "enroll_2fa"]
    # The printed password signs in once from a first browser (no mail server needed: it is the one-time
    # secret), with a password change and 2FA enrolment required before anything else.
    from thingward.accounts.service import Accounts
    from thingward.platform import Platform

    platform = Platform.open(cli_dir)
    try:
        accounts = Accounts.for_platform(platform)
        first = accounts.login("root@example.com", out["password"], user_agent="first")
        assert first.outcome == "ok" and first.requirements == ("change_password", "enroll_2fa")
        # Another new browser is verified as usual: a mailed code, and no mail server here is a clear error.
        with pytest.raises(ConfigError, match="no mail server is configured"):
            accounts.login("root@example.com", out["password"], user_agent="second")
    finally:
        platform.close()


def test_add_with_password_env_and_the_policy_applies(cli_dir: Path) -> None:
    weak = run(cli_dir, "user", "add", "a@example.com", "--password-env", "PW", code=1, env={"PW": "password12345"})
    assert "common or breached" in weak["error"]
    missing = run(cli_dir, "user", "add", "a@example.com", "--password-env", "NOPE_NOT_SET", code=1)
    assert "not set" in missing["error"]
    out = run(
        cli_dir, "user", "add", "a@example.com", "--password-env", "PW", env={"PW": "tangerine harpsichord velvet"}
    )
    assert out["password"] is None and not out["must_change_password"]
    assert "exists already" in run(cli_dir, "user", "add", "a@example.com", code=1)["error"]


def test_list_disable_enable_admin(cli_dir: Path) -> None:
    run(cli_dir, "user", "add", "a@example.com")
    run(cli_dir, "user", "add", "b@example.com")
    assert [u["email"] for u in run(cli_dir, "user", "list")["users"]] == ["a@example.com", "b@example.com"]
    assert run(cli_dir, "user", "disable", "a@example.com")["disabled"] is True
    assert run(cli_dir, "user", "disable", "a@example.com", "--enable")["disabled"] is False
    assert run(cli_dir, "user", "admin", "b@example.com")["admin"] is True
    assert "no user with email" in run(cli_dir, "user", "disable", "zed@example.com", code=1)["error"]
    assert "not an email address" in run(cli_dir, "user", "add", "not-an-email", code=1)["error"]


def test_groups_members_and_sharing(cli_dir: Path) -> None:
    run(cli_dir, "user", "add", "alice@example.com")
    run(cli_dir, "device", "add", "front-door-cam")
    run(cli_dir, "user", "group", "add", "smiths", "--description", "the Smith household")
    run(cli_dir, "user", "group", "member", "smiths", "alice@example.com")
    out = run(cli_dir, "user", "share", "front-door-cam", "smiths", "--role", "owner")
    assert out == {"thing": "front-door-cam", "shared_with": [{"group": "smiths", "role": "owner"}]}
    groups = run(cli_dir, "user", "group", "list")["groups"]
    assert groups == [{"name": "smiths", "description": "the Smith household", "members": ["alice@example.com"]}]
    assert run(cli_dir, "user", "show", "alice@example.com")["groups"] == ["smiths"]
    assert (
        "role must be one of"
        in run(cli_dir, "user", "share", "front-door-cam", "smiths", "--role", "god", code=1)["error"]
    )
    assert run(cli_dir, "user", "share", "front-door-cam", "smiths", "--remove")["shared_with"] == []
    run(cli_dir, "user", "group", "member", "smiths", "alice@example.com", "--remove")
    assert run(cli_dir, "user", "show", "alice@example.com")["groups"] == []


def test_invite_prints_a_link_without_a_mail_server(cli_dir: Path) -> None:
    out = run(cli_dir, "user", "invite", "new@example.com")
    assert "/signup?invite=" in out["invite_link"]


def test_human_output_and_help(cli_dir: Path) -> None:
    result = runner.invoke(app, ["user", "add", "h@example.com", "--data-dir", str(cli_dir)])
    assert result.exit_code == 0 and "shown once" in result.stdout
    result = runner.invoke(app, ["user", "--help"])
    assert result.exit_code == 0
    for command in ("add", "list", "show", "disable", "group", "share", "invite", "unlock"):
        assert command in result.stdout


def test_operator_resets_password_and_2fa(cli_dir: Path) -> None:
    from lab.accounts import enroll_totp
    from thingward.accounts.service import Accounts
    from thingward.platform import Platform

    out = run(
        cli_dir, "user", "add", "a@example.com", "--password-env", "PW", env={"PW": "tangerine harpsichord velvet"}
    )
    assert "no 2FA to reset" in run(cli_dir, "user", "reset-2fa", "a@example.com", code=1)["error"]
    platform = Platform.open(cli_dir)
    try:
        enroll_totp(Accounts.for_platform(platform), out["id"])
    finally:
        platform.close()
    assert run(cli_dir, "user", "show", "a@example.com")["totp_enabled"] is True
    run(cli_dir, "user", "reset-2fa", "a@example.com")
    assert run(cli_dir, "user", "show", "a@example.com")["totp_enabled"] is False
    new = run(cli_dir, "user", "reset-password", "a@example.com")
    assert len(new["password"]) >= 24
    shown = run(cli_dir, "user", "show", "a@example.com")
    assert shown["must_change_password"] is True and shown["recovery_codes_left"] is None
