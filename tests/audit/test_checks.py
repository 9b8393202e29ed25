"""Each audit check, on a snapshot that triggers it and one that does not; and the CLI's CI gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from lab.audit_snapshots import DAY, NOW, result, snapshot, world
from thingward.audit import checks
from thingward.audit.model import CertificateFacts, DeviceFacts
from thingward.audit.report import build_report, fails_gate
from thingward.cli.main import app


def test_a_clean_platform_fails_no_check() -> None:
    results = checks.run_checks(snapshot())
    assert [r.info.id for r in results if r.status == "fail"] == []
    assert {r.info.id for r in results if r.status == "not_applicable"} == {
        "REVOKED_BUT_CONNECTED",
        "SHARED_IDENTITY",
        "USERS_WITHOUT_2FA",
        "FIRMWARE_ADVISORY",
        "DEVICE_OPEN_PORTS",
        "ONBOARDING_WINDOW_OPEN",
    }


def test_every_check_names_its_standard_and_remedy() -> None:
    for r in checks.run_checks(snapshot()):
        assert r.info.remediation and r.info.references, r.info.id
        assert set(r.info.references) <= {"etsi_en_303_645", "owasp_iot_top10", "uk_psti"}


def test_policy_reaching_every_device_is_overly_permissive() -> None:
    wide = {"statements": [{"effect": "allow", "actions": ["subscribe", "receive"], "resources": ["#"]}]}
    assert result("POLICY_OVERLY_PERMISSIVE", snapshot(world=world(wide))).status == "fail"
    own = {"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/x"]}]}
    assert result("POLICY_OVERLY_PERMISSIVE", snapshot(world=world(own))).status == "pass"


def test_policy_on_a_single_thing() -> None:
    own = {"statements": [{"effect": "allow", "actions": ["publish"], "resources": ["things/${thing.name}/x"]}]}
    failed = result("POLICY_ON_SINGLE_THING", snapshot(world=world(own, on_thing=True)))
    assert failed.status == "fail" and failed.findings[0].resource == "policy:extra"
    assert result("POLICY_ON_SINGLE_THING", snapshot(world=world(own))).status == "pass"


def test_deny_that_cannot_match() -> None:
    useless = {"statements": [{"effect": "deny", "actions": ["publish"], "resources": ["nowhere/${thing.name}"]}]}
    assert result("POLICY_USELESS_DENY", snapshot(world=world(useless))).status == "fail"
    useful = {"statements": [{"effect": "deny", "actions": ["publish"], "resources": ["things/${thing.name}/debug"]}]}
    assert result("POLICY_USELESS_DENY", snapshot(world=world(useful))).status == "pass"


@pytest.mark.parametrize(
    ("days", "status", "severity"), [(10, "fail", "medium"), (-1, "fail", "critical"), (31, "pass", None)]
)
def test_device_certificate_expiry(days: int, status: str, severity: str | None) -> None:
    cert = CertificateFacts("cam1", "aa", "active", NOW + days * DAY, "ec-secp256r1")
    checked = result("DEVICE_CERT_EXPIRING", snapshot(certificates=(cert,)))
    assert checked.status == status
    assert [f.severity for f in checked.findings] == ([severity] if severity else [])


def test_revoked_certificates_do_not_count_as_expiring() -> None:
    cert = CertificateFacts("cam1", "aa", "revoked", NOW + DAY, "ec-secp256r1")
    assert result("DEVICE_CERT_EXPIRING", snapshot(certificates=(cert,))).status == "pass"


def test_ca_certificate_expiry() -> None:
    assert result("CA_CERT_EXPIRING", snapshot(ca_not_after=NOW + 100 * DAY)).status == "fail"
    assert result("CA_CERT_EXPIRING", snapshot()).status == "pass"


@pytest.mark.parametrize(
    ("key_type", "status"),
    [("rsa-1024", "fail"), ("ec-secp256k1", "fail"), ("rsa-2048", "pass"), ("ec-secp384r1", "pass")],
)
def test_weak_keys(key_type: str, status: str) -> None:
    cert = CertificateFacts("cam1", "aa", "active", NOW + 80 * DAY, key_type)
    assert result("WEAK_DEVICE_KEY", snapshot(certificates=(cert,))).status == status


def test_revoked_but_connected_needs_and_uses_the_live_session_list() -> None:
    revoked = (CertificateFacts("cam1", "aa", "revoked", NOW + 80 * DAY, "ec-secp256r1"),)
    assert result("REVOKED_BUT_CONNECTED", snapshot(certificates=revoked)).status == "not_applicable"
    assert (
        result("REVOKED_BUT_CONNECTED", snapshot(certificates=revoked, live_things=frozenset({"cam1"}))).status
        == "fail"
    )
    assert result("REVOKED_BUT_CONNECTED", snapshot(live_things=frozenset({"cam1"}))).status == "pass"


def test_stale_devices() -> None:
    old = (DeviceFacts("cam1", False, NOW - 90 * DAY, NOW - 40 * DAY),)
    assert result("STALE_DEVICE", snapshot(devices=old)).status == "fail"
    never = (DeviceFacts("cam1", False, NOW - 90 * DAY, None),)
    assert "never seen" in result("STALE_DEVICE", snapshot(devices=never)).findings[0].message
    disabled = (DeviceFacts("cam1", True, NOW - 90 * DAY, None),)
    assert result("STALE_DEVICE", snapshot(devices=disabled)).status == "pass"


def test_plaintext_listener_ca_key_and_audit_chain() -> None:
    assert result("PLAINTEXT_LISTENER", snapshot(plaintext_port=1883)).status == "fail"
    assert result("PLAINTEXT_LISTENER", snapshot()).status == "pass"
    assert result("CA_KEY_UNENCRYPTED", snapshot(ca_key_encrypted=False)).status == "fail"
    assert result("AUDIT_LOG_TAMPERED", snapshot(audit_chain_intact=False)).status == "fail"
    assert result("AUDIT_LOG_TAMPERED", snapshot()).status == "pass"


def test_gate_and_report() -> None:
    results = checks.run_checks(snapshot(plaintext_port=1883))
    assert fails_gate(results, "high") and fails_gate(results, "low")
    assert not fails_gate(results, "critical") and not fails_gate(results, None)
    report = build_report(results, NOW)
    assert report["summary"]["findings"]["high"] == 1
    assert report["checks"][0]["id"] == "PLAINTEXT_LISTENER"  # failures first


@pytest.mark.both_databases
def test_cli_audit_on_a_real_data_dir(tmp_path: Path, database_url: str | None) -> None:
    runner = CliRunner()
    data = str(tmp_path / "d")
    database = ["--database-url", database_url] if database_url else []
    assert runner.invoke(app, ["init", "--data-dir", data, *database]).exit_code == 0
    out = runner.invoke(app, ["audit", "--data-dir", data, "--json"])
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    failed = {c["id"] for c in report["checks"] if c["status"] == "fail"}
    expected = {"CA_KEY_UNENCRYPTED"}  # init without --ca-passphrase-env
    if database_url and make_url(database_url).password:
        expected.add("CONFIG_DEFAULT_PASSWORD")  # the test server's password sits in the URL: medium, not high
    assert failed == expected
    gated = runner.invoke(app, ["audit", "--data-dir", data, "--json", "--fail-on", "medium"])
    assert gated.exit_code == 1
    assert runner.invoke(app, ["audit", "--data-dir", data, "--json", "--fail-on", "high"]).exit_code == 0
    page = tmp_path / "report.html"
    assert runner.invoke(app, ["audit", "--data-dir", data, "--html", str(page), "--json"]).exit_code == 0
    assert "CA_KEY_UNENCRYPTED" in page.read_text()
    bad = runner.invoke(app, ["audit", "--data-dir", data, "--json", "--fail-on", "severe"])
    assert bad.exit_code == 1 and "unknown severity" in json.loads(bad.stdout)["error"]


def test_a_failed_check_is_as_severe_as_its_worst_finding() -> None:
    expired = CertificateFacts("cam1", "aa", "active", NOW - DAY, "ec-secp256r1")
    checked = result("DEVICE_CERT_EXPIRING", snapshot(certificates=(expired,)))
    assert checked.info.severity == "medium" and checked.severity == "critical"
    assert build_report([checked], NOW)["checks"][0]["severity"] == "critical"


def test_html_report_is_self_contained_and_escapes_what_it_shows(tmp_path: Path) -> None:
    from thingward.audit.html import render_html

    hostile = {"statements": [{"sid": "x", "effect": "allow", "actions": ["receive"], "resources": ["#"]}]}
    results = checks.run_checks(snapshot(world=world(hostile), plaintext_port=1883))
    report = build_report(results, NOW)
    report["checks"][0]["findings"][0]["message"] = "<script>alert(1)</script>"
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere
    assert "POLICY_OVERLY_PERMISSIVE" in page and "ETSI EN 303 645" in page
