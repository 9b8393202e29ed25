"""The checks on what devices report (ports, firmware, onboarding) and on live sessions (takeovers, revoked)."""

from __future__ import annotations

import datetime as dt

from lab.audit_snapshots import NOW, result, snapshot
from thingward.audit.model import AdvisoryFacts, CertificateFacts, ModelFacts, ReportFacts
from thingward.live import SessionFacts, TakeoverFacts

MIN = dt.timedelta(minutes=1)


def report(thing: str = "cam1", **kwargs) -> ReportFacts:
    base = {
        "thing": thing,
        "received_at": NOW - MIN,
        "model": "cam-x",
        "reported_model": "cam-x",
        "firmware_version": "1.2.0",
    }
    base.update(kwargs)
    return ReportFacts(**base)


CAM_X = {"cam-x": ModelFacts("cam-x", frozenset({443, 8883}), frozenset({5353}))}


def messages(check_id: str, **kwargs) -> list[str]:
    return [f"{f.resource} {f.severity} {f.message}" for f in result(check_id, snapshot(**kwargs)).findings]


def test_open_ports_not_applicable_until_a_device_reports() -> None:
    assert result("DEVICE_OPEN_PORTS", snapshot()).status == "not_applicable"


def test_ports_inside_the_models_list_pass() -> None:
    r = result("DEVICE_OPEN_PORTS", snapshot(reports=(report(tcp_ports=(443,), udp_ports=(5353,)),), models=CAM_X))
    assert r.status == "pass", r.findings


def test_telnet_is_critical_even_when_the_model_allows_it() -> None:
    models = {"cam-x": ModelFacts("cam-x", frozenset({23}), frozenset())}
    found = messages("DEVICE_OPEN_PORTS", reports=(report(tcp_ports=(23,)),), models=models)
    assert found == ["thing:cam1 critical Telnet listening on TCP 23: a plaintext login"]


def test_ssh_and_ports_outside_the_list_are_flagged() -> None:
    found = messages(
        "DEVICE_OPEN_PORTS", reports=(report(tcp_ports=(22, 443, 8080), udp_ports=(1900, 5353)),), models=CAM_X
    )
    assert found == [
        "thing:cam1 high SSH listening on TCP 22: a remote login in production",
        "thing:cam1 medium TCP 8080 is not in model cam-x's allowed ports",
        "thing:cam1 medium UDP 1900 is not in model cam-x's allowed ports",
    ]


def test_a_model_without_a_profile_is_said_to_go_unjudged() -> None:
    found = messages("DEVICE_OPEN_PORTS", reports=(report(tcp_ports=(8080,)),))
    assert found == ["thing:cam1 low model 'cam-x' has no allowed-port list: its other ports go unjudged"]


def test_firmware_advisory_matches_older_versions_of_its_model_only() -> None:
    advisories = (AdvisoryFacts("CVE-2026-0001", "cam-x", "<1.3.0", "critical", "RCE in the web UI"),)
    reports = (
        report("cam1", firmware_version="1.2.9"),
        report("cam2", firmware_version="1.3.0"),
        report("cam3", firmware_version="1.10.0"),
        report("hub1", model="hub-y", reported_model="hub-y", firmware_version="0.1"),
    )
    found = messages("FIRMWARE_ADVISORY", reports=reports, advisories=advisories)
    assert found == [
        "thing:cam1 critical cam-x firmware 1.2.9 is affected by CVE-2026-0001 (affected: <1.3.0): RCE in the web UI"
    ]


def test_firmware_check_passes_with_a_note_when_no_advisory_exists() -> None:
    r = result("FIRMWARE_ADVISORY", snapshot(reports=(report(),)))
    assert r.status == "pass" and "no advisories" in r.note
    assert result("FIRMWARE_ADVISORY", snapshot()).status == "not_applicable"


def test_an_uncomparable_version_is_reported_not_ignored() -> None:
    advisories = (AdvisoryFacts("ADV-1", "cam-x", "<2.0", "high"),)
    found = messages("FIRMWARE_ADVISORY", reports=(report(firmware_version="banana"),), advisories=advisories)
    assert found == ["thing:cam1 low firmware version 'banana' cannot be compared with ADV-1's affected range"]


def test_onboarding_window_open_past_the_limit() -> None:
    reports = (
        report("cam1", onboarding_state="ap", onboarding_since=NOW - 16 * MIN),
        report("cam2", onboarding_state="ap", onboarding_since=NOW - 5 * MIN),
        report("cam3", onboarding_state="provisioned", onboarding_since=NOW - 300 * MIN),
        report("cam4", onboarding_state="ap"),
    )
    found = messages("ONBOARDING_WINDOW_OPEN", reports=reports)
    assert found == [
        "thing:cam1 high in access point mode for 16 min (limit 15 min)",
        "thing:cam4 medium in access point mode and does not say since when",
    ]
    assert result("ONBOARDING_WINDOW_OPEN", snapshot(reports=reports[1:3])).status == "pass"


def takeover(at: dt.datetime, old: str, new: str) -> TakeoverFacts:
    return TakeoverFacts("cam1", at, old, new)


def test_takeovers_from_two_addresses_are_a_shared_identity() -> None:
    flapping = tuple(
        takeover(NOW - i * MIN, f"127.0.0.{1 + i % 2}:5000{i}", f"127.0.0.{2 - i % 2}:6000{i}") for i in range(3)
    )
    found = messages("SHARED_IDENTITY", sessions=(), takeovers=flapping)
    assert found == ["thing:cam1 high 3 session takeovers in 10 min from 127.0.0.1, 127.0.0.2"]


def test_reconnects_from_one_address_or_long_ago_are_not() -> None:
    same_host = tuple(takeover(NOW - i * MIN, f"10.0.0.5:{5000 + i}", f"10.0.0.5:{6000 + i}") for i in range(5))
    old = tuple(takeover(NOW - (20 + i) * MIN, "10.0.0.5:1", "10.0.0.6:2") for i in range(5))
    assert result("SHARED_IDENTITY", snapshot(sessions=(), takeovers=same_host + old)).status == "pass"
    assert result("SHARED_IDENTITY", snapshot(takeovers=same_host)).status == "not_applicable"


def test_a_live_session_on_a_revoked_serial_is_critical() -> None:
    certificates = (
        CertificateFacts("cam1", "AB12", "revoked", NOW + 80 * dt.timedelta(days=1), "ec-secp256r1"),
        CertificateFacts("cam1", "cd34", "active", NOW + 80 * dt.timedelta(days=1), "ec-secp256r1"),
    )
    sessions = (SessionFacts("cam1", "ab12", "127.0.0.1:4000", NOW - MIN),)
    found = messages(
        "REVOKED_BUT_CONNECTED", certificates=certificates, sessions=sessions, live_things=frozenset({"cam1"})
    )
    assert found == ["thing:cam1 critical connected from 127.0.0.1:4000 with revoked certificate ab12"]
    current = (SessionFacts("cam1", "cd34", "127.0.0.1:4000", NOW - MIN),)
    r = result(
        "REVOKED_BUT_CONNECTED", snapshot(certificates=certificates, sessions=current, live_things=frozenset({"cam1"}))
    )
    assert r.status == "pass"


def test_users_without_2fa_admins_high_users_low_unless_required() -> None:
    from thingward.audit.model import AccountPolicyFacts, UserFacts

    users = (
        UserFacts("root@example.test", True, False),
        UserFacts("ann@example.test", False, False),
        UserFacts("bob@example.test", False, True),
    )
    assert messages("USERS_WITHOUT_2FA", users=users) == [
        "user:root@example.test high an admin signs in without a second factor",
        "user:ann@example.test low signs in without a second factor (allowed by the settings)",
    ]
    strict = AccountPolicyFacts(require_2fa_everyone=True)
    assert "medium" in messages("USERS_WITHOUT_2FA", users=users, account_policy=strict)[1]
    assert result("USERS_WITHOUT_2FA", snapshot(users=users[2:])).status == "pass"
    assert result("USERS_WITHOUT_2FA", snapshot(users=())).status == "not_applicable"


def test_a_password_policy_below_the_baseline_is_flagged() -> None:
    from thingward.audit.model import AccountPolicyFacts

    assert result("PASSWORD_POLICY_WEAK", snapshot()).status == "pass"
    weak = AccountPolicyFacts(password_min_length=6, password_max_length=32, require_2fa_admins=False)
    assert messages("PASSWORD_POLICY_WEAK", account_policy=weak) == [
        "config:accounts high minimum length 6: under NIST's 8",
        "config:accounts medium passwords capped at 32: NIST asks to allow 64",
        "config:accounts high admins may sign in without a second factor",
    ]


def test_a_common_password_in_the_settings_is_critical() -> None:
    assert messages("CONFIG_DEFAULT_PASSWORD", config_passwords={"database.url": "admin123"}) == [
        "config:database.url critical the password is a known default or common password"
    ]
    assert messages("CONFIG_DEFAULT_PASSWORD", config_passwords={"database.url": "vT9#qLm2!xWz8rPk"}) == [
        "config:database.url medium a password sits in the settings in clear; pass it from outside"
    ]
    assert result("CONFIG_DEFAULT_PASSWORD", snapshot()).status == "pass"


def test_a_public_key_shared_by_two_devices_is_critical() -> None:
    days = dt.timedelta(days=80)
    certificates = (
        CertificateFacts("cam1", "a1", "active", NOW + days, "ec-secp256r1", public_key_sha256="k" * 64),
        CertificateFacts("cam2", "a2", "active", NOW + days, "ec-secp256r1", public_key_sha256="k" * 64),
        CertificateFacts("cam3", "a3", "active", NOW + days, "ec-secp256r1", public_key_sha256="m" * 64),
        CertificateFacts("cam4", "a4", "revoked", NOW + days, "ec-secp256r1", public_key_sha256="m" * 64),
    )
    assert messages("WEAK_DEVICE_KEY", certificates=certificates) == [
        "thing:cam1 critical its public key is also the key of cam2",
        "thing:cam2 critical its public key is also the key of cam1",
    ]


def test_an_audit_schedule_turned_off_or_rare_is_flagged() -> None:
    assert result("AUDIT_SCHEDULE_OFF", snapshot()).status == "pass"
    assert messages("AUDIT_SCHEDULE_OFF", audit_interval_minutes=0) == [
        "config:audit.interval_minutes medium 0: the server never audits by itself"
    ]
    assert messages("AUDIT_SCHEDULE_OFF", audit_interval_minutes=30 * 24 * 60) == [
        "config:audit.interval_minutes low an audit only every 30 days"
    ]
