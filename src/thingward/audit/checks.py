"""The audit checks: each is a pure function of an `AuditSnapshot` and returns a `CheckResult`.

A check whose subject does not exist yet on this platform (user accounts, firmware, device-reported
ports) is reported as not applicable, never silently skipped.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from thingward.accounts.passwords import is_common
from thingward.audit.model import AdvisoryFacts, AuditSnapshot, CheckInfo, CheckResult, Finding, Severity
from thingward.policy.lint import lint_world

ETSI = "etsi_en_303_645"
OWASP = "owasp_iot_top10"
PSTI = "uk_psti"

Check = Callable[[AuditSnapshot], CheckResult]

POLICY_OVERLY_PERMISSIVE = CheckInfo(
    id="POLICY_OVERLY_PERMISSIVE",
    title="A policy lets devices reach beyond their own topics",
    severity="high",
    part="cloud",
    remediation="Scope publish/subscribe/receive resources to things/${thing.name}/...; never '#' or '+' first.",
    references={ETSI: "5.6 Minimize exposed attack surfaces", OWASP: "I3 Insecure Ecosystem Interfaces"},
)
POLICY_ON_SINGLE_THING = CheckInfo(
    id="POLICY_ON_SINGLE_THING",
    title="A policy is attached to a single thing instead of a group",
    severity="medium",
    part="cloud",
    remediation="Attach the policy to a thing group and put the thing in it (thingward policy attach --group).",
    references={OWASP: "I8 Lack of Device Management"},
)
POLICY_USELESS_DENY = CheckInfo(
    id="POLICY_USELESS_DENY",
    title="A deny statement can never match what it was meant to deny",
    severity="medium",
    part="cloud",
    remediation="Fix the deny's topic pattern so it covers the topics that allows grant; check with 'policy explain'.",
    references={ETSI: "5.6 Minimize exposed attack surfaces", OWASP: "I3 Insecure Ecosystem Interfaces"},
)
POLICY_BROKEN_REFERENCE = CheckInfo(
    id="POLICY_BROKEN_REFERENCE",
    title="A policy refers to an attribute or object some members lack",
    severity="low",
    part="cloud",
    remediation="Set the attribute on every member or change the policy: where it is missing, nothing is granted.",
    references={OWASP: "I8 Lack of Device Management"},
)
DEVICE_CERT_EXPIRING = CheckInfo(
    id="DEVICE_CERT_EXPIRING",
    title="A device certificate expires soon or has expired",
    severity="medium",
    part="device",
    remediation="Re-enroll the device with a new token (thingward device token NAME) before the date.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I8 Lack of Device Management"},
)
CA_CERT_EXPIRING = CheckInfo(
    id="CA_CERT_EXPIRING",
    title="The platform CA certificate expires soon or has expired",
    severity="critical",
    part="cloud",
    remediation="Plan a CA rotation: every device certificate and the server certificate chain to this CA.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I8 Lack of Device Management"},
)
WEAK_DEVICE_KEY = CheckInfo(
    id="WEAK_DEVICE_KEY",
    title="An active device certificate carries a weak or shared key",
    severity="high",
    part="device",
    remediation="Revoke the certificate and re-enroll the device with an EC P-256 key.",
    references={
        ETSI: "5.4 Securely store sensitive security parameters",
        OWASP: "I7 Insecure Data Transfer and Storage",
    },
)
REVOKED_BUT_CONNECTED = CheckInfo(
    id="REVOKED_BUT_CONNECTED",
    title="A revoked or disabled device still has a live session",
    severity="critical",
    part="network",
    remediation="Run 'thingward device disable NAME'; a running server drops the session within a second.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I8 Lack of Device Management"},
)
STALE_DEVICE = CheckInfo(
    id="STALE_DEVICE",
    title="A device has not been seen for a long time",
    severity="low",
    part="device",
    remediation="Find out why it is silent; disable it if it is gone, so its certificate cannot be reused.",
    references={ETSI: "5.10 Examine system telemetry data", OWASP: "I8 Lack of Device Management"},
)
PLAINTEXT_LISTENER = CheckInfo(
    id="PLAINTEXT_LISTENER",
    title="A plaintext MQTT listener is configured",
    severity="high",
    part="network",
    remediation="Remove [mqtt] plaintext_port from thingward.toml; devices connect over mutual TLS only.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I7 Insecure Data Transfer and Storage"},
)
CA_KEY_UNENCRYPTED = CheckInfo(
    id="CA_KEY_UNENCRYPTED",
    title="The CA private key is stored unencrypted",
    severity="medium",
    part="cloud",
    remediation="Encrypt it at rest: init with --ca-passphrase-env (a new data dir), or keep the key in an HSM.",
    references={
        ETSI: "5.4 Securely store sensitive security parameters",
        OWASP: "I7 Insecure Data Transfer and Storage",
    },
)
AUDIT_LOG_TAMPERED = CheckInfo(
    id="AUDIT_LOG_TAMPERED",
    title="The audit log's hash chain is broken",
    severity="critical",
    part="cloud",
    remediation="Someone changed the audit log outside thingward: treat as an incident; see 'thingward log verify'.",
    references={ETSI: "5.10 Examine system telemetry data", OWASP: "I8 Lack of Device Management"},
)
USERS_WITHOUT_2FA = CheckInfo(
    id="USERS_WITHOUT_2FA",
    title="A user or admin has no second factor",
    severity="high",
    part="app",
    remediation="Have each listed user turn on TOTP; keep [accounts] require_2fa_admins = true.",
    references={
        ETSI: "5.1 No universal default passwords",
        OWASP: "I1 Weak, Guessable, or Hardcoded Passwords",
        PSTI: "1 Passwords",
    },
)
FIRMWARE_ADVISORY = CheckInfo(
    id="FIRMWARE_ADVISORY",
    title="A device runs firmware with a published advisory",
    severity="high",
    part="device",
    remediation="Update the affected devices to a fixed version (see 'thingward ota advisory devices ID').",
    references={
        ETSI: "5.3 Keep software updated",
        OWASP: "I4 Lack of Secure Update Mechanism",
        PSTI: "3 Security update period",
    },
)
DEVICE_OPEN_PORTS = CheckInfo(
    id="DEVICE_OPEN_PORTS",
    title="A device reports listening services outside its model's allowed list (Telnet, SSH, ...)",
    severity="high",
    part="device",
    remediation="Ship firmware with the service off; list the ports a model needs with 'thingward model set'.",
    references={ETSI: "5.6 Minimize exposed attack surfaces", OWASP: "I2 Insecure Network Services"},
)
ONBOARDING_WINDOW_OPEN = CheckInfo(
    id="ONBOARDING_WINDOW_OPEN",
    title="A device has been in onboarding (access point) mode for too long",
    severity="high",
    part="network",
    remediation="Finish or cancel its setup; firmware must close the provisioning window after 3-15 minutes.",
    references={
        ETSI: "5.6 Minimize exposed attack surfaces",
        OWASP: "I9 Insecure Default Settings",
    },
)
SHARED_IDENTITY = CheckInfo(
    id="SHARED_IDENTITY",
    title="One device identity is used by several connections (a cloned certificate or a client id conflict)",
    severity="high",
    part="network",
    remediation="Find the copies; revoke the certificate (thingward device revoke NAME) and re-enroll the real device.",
    references={
        ETSI: "5.4 Securely store sensitive security parameters",
        OWASP: "I8 Lack of Device Management",
    },
)

PASSWORD_POLICY_WEAK = CheckInfo(
    id="PASSWORD_POLICY_WEAK",
    title="The password and sign-in policy is below the baseline",
    severity="medium",
    part="app",
    remediation="Restore the [accounts] defaults: 12+ characters, 64+ allowed, strength 3, 2FA for admins.",
    references={
        ETSI: "5.1 No universal default passwords",
        OWASP: "I1 Weak, Guessable, or Hardcoded Passwords",
        PSTI: "1 Passwords",
    },
)
CONFIG_DEFAULT_PASSWORD = CheckInfo(
    id="CONFIG_DEFAULT_PASSWORD",
    title="A password written in the settings is a known default or common password",
    severity="critical",
    part="cloud",
    remediation="Change that password at its service, and pass it outside the settings (e.g. PGPASSWORD).",
    references={
        ETSI: "5.1 No universal default passwords",
        OWASP: "I1 Weak, Guessable, or Hardcoded Passwords",
        PSTI: "1 Passwords",
    },
)

AUDIT_SCHEDULE_OFF = CheckInfo(
    id="AUDIT_SCHEDULE_OFF",
    title="The running server does not audit the fleet on a schedule",
    severity="medium",
    part="cloud",
    remediation="Set [audit] interval_minutes (1440: daily) so drift is found and kept in the history.",
    references={ETSI: "5.10 Examine system telemetry data", OWASP: "I8 Lack of Device Management"},
)

TELNET_PORTS = frozenset({23, 2323})
SSH_PORTS = frozenset({22})
TAKEOVER_WINDOW = dt.timedelta(minutes=10)
# A device's clock may run this far ahead of ours before a time it reports counts as in the future.
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
TAKEOVERS_SUSPICIOUS = 3  # takeovers within the window, from two or more addresses

_LINT_CHECKS: dict[str, CheckInfo] = {
    "overly-permissive-wildcard": POLICY_OVERLY_PERMISSIVE,
    "allow-outside-thing-namespace": POLICY_OVERLY_PERMISSIVE,
    "policy-attached-to-thing": POLICY_ON_SINGLE_THING,
    "useless-deny": POLICY_USELESS_DENY,
    "missing-thing-attribute": POLICY_BROKEN_REFERENCE,
    "dangling-reference": POLICY_BROKEN_REFERENCE,
}


def _result(info: CheckInfo, findings: list[Finding]) -> CheckResult:
    return CheckResult(info=info, status="fail" if findings else "pass", findings=tuple(findings))


def policy_checks(snapshot: AuditSnapshot) -> list[CheckResult]:
    """The policy checks share one lint pass over the world."""
    by_check: dict[str, list[Finding]] = {info.id: [] for info in _LINT_CHECKS.values()}
    for lint in lint_world(snapshot.world):
        info = _LINT_CHECKS.get(lint.code)
        if info is None:
            continue  # e.g. an unattached policy: untidy, not a weakness
        resource = f"policy:{lint.policy}" if lint.policy else lint.target
        by_check[info.id].append(Finding(resource=resource, message=lint.message, severity=lint.severity))
    infos = {info.id: info for info in _LINT_CHECKS.values()}
    return [_result(infos[check_id], findings) for check_id, findings in by_check.items()]


def _expiry_severity(remaining: dt.timedelta, default: Severity) -> Severity:
    return "critical" if remaining <= dt.timedelta(0) else default


def device_certificates_expiring(snapshot: AuditSnapshot) -> CheckResult:
    horizon = dt.timedelta(days=snapshot.expiry_days)
    disabled = {d.name for d in snapshot.devices if d.disabled}
    findings = []
    for cert in snapshot.certificates:
        if cert.status != "active" or cert.thing in disabled:
            continue
        remaining = cert.not_after - snapshot.now
        if remaining <= horizon:
            when = "expired" if remaining <= dt.timedelta(0) else f"expires in {remaining.days} day(s)"
            findings.append(
                Finding(
                    resource=f"thing:{cert.thing}",
                    message=f"certificate {cert.serial} {when} ({cert.not_after:%Y-%m-%d})",
                    severity=_expiry_severity(remaining, DEVICE_CERT_EXPIRING.severity),
                )
            )
    return _result(DEVICE_CERT_EXPIRING, findings)


def ca_certificate_expiring(snapshot: AuditSnapshot) -> CheckResult:
    if snapshot.ca_not_after is None:
        return CheckResult(CA_CERT_EXPIRING, "not_applicable", note="no CA certificate was found")
    remaining = snapshot.ca_not_after - snapshot.now
    findings = []
    if remaining <= dt.timedelta(days=max(snapshot.expiry_days, 365)):
        findings.append(
            Finding(
                resource="ca",
                message=f"the platform CA certificate expires on {snapshot.ca_not_after:%Y-%m-%d}",
                severity=CA_CERT_EXPIRING.severity,
            )
        )
    return _result(CA_CERT_EXPIRING, findings)


def weak_device_keys(snapshot: AuditSnapshot) -> CheckResult:
    findings = []
    for cert in snapshot.certificates:
        if cert.status != "active":
            continue
        kind, _, size = cert.key_type.partition("-")
        weak = (kind == "rsa" and size.isdigit() and int(size) < 2048) or (
            kind == "ec" and size not in {"secp256r1", "secp384r1", "secp521r1"}
        )
        if weak or kind not in {"rsa", "ec"}:
            findings.append(
                Finding(f"thing:{cert.thing}", f"certificate {cert.serial} has a {cert.key_type} key", "high")
            )
    # A key known to more than one device is known-bad: whoever has one unit's key speaks for the others.
    holders: dict[str, set[str]] = defaultdict(set)
    for cert in snapshot.certificates:
        if cert.status == "active" and cert.public_key_sha256:
            holders[cert.public_key_sha256].add(cert.thing)
    for things in holders.values():
        if len(things) > 1:
            for thing in sorted(things):
                others = ", ".join(sorted(things - {thing}))
                findings.append(Finding(f"thing:{thing}", f"its public key is also the key of {others}", "critical"))
    return _result(WEAK_DEVICE_KEY, findings)


def revoked_but_connected(snapshot: AuditSnapshot) -> CheckResult:
    if snapshot.live_things is None:
        return CheckResult(REVOKED_BUT_CONNECTED, "not_applicable", note="needs the session list of a running server")
    active = {c.thing for c in snapshot.certificates if c.status == "active"}
    revoked_serials = {c.serial.lower() for c in snapshot.certificates if c.status == "revoked"}
    disabled = {d.name for d in snapshot.devices if d.disabled}
    flagged = {
        thing: "connected without an active certificate, or while disabled"
        for thing in snapshot.live_things
        if thing in disabled or thing not in active
    }
    for session in snapshot.sessions or ():
        if session.serial.lower() in revoked_serials:
            flagged[session.thing] = f"connected from {session.peer} with revoked certificate {session.serial}"
    findings = [Finding(f"thing:{thing}", why, "critical") for thing, why in sorted(flagged.items())]
    return _result(REVOKED_BUT_CONNECTED, findings)


def _peer_host(peer: str) -> str:
    return peer.rpartition(":")[0] or peer


def shared_identity(snapshot: AuditSnapshot) -> CheckResult:
    """Sessions of one thing that keep closing each other from different addresses: two devices, one identity."""
    if snapshot.sessions is None:
        return CheckResult(SHARED_IDENTITY, "not_applicable", note="needs the session history of a running server")
    recent: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for takeover in snapshot.takeovers:
        if snapshot.now - takeover.at <= TAKEOVER_WINDOW:
            recent[takeover.thing].append((_peer_host(takeover.old_peer), _peer_host(takeover.new_peer)))
    findings = []
    for thing, pairs in sorted(recent.items()):
        hosts = sorted({host for pair in pairs for host in pair})
        if len(pairs) >= TAKEOVERS_SUSPICIOUS and len(hosts) >= 2:
            findings.append(
                Finding(
                    f"thing:{thing}",
                    f"{len(pairs)} session takeovers in {TAKEOVER_WINDOW.seconds // 60} min from {', '.join(hosts)}",
                    SHARED_IDENTITY.severity,
                )
            )
    return _result(SHARED_IDENTITY, findings)


def device_open_ports(snapshot: AuditSnapshot) -> CheckResult:
    reporting = [r for r in snapshot.reports if r.tcp_ports or r.udp_ports or r.firmware_version]
    if not reporting:
        return CheckResult(DEVICE_OPEN_PORTS, "not_applicable", note="no device has reported its listening ports")
    findings = []
    for report in reporting:
        resource = f"thing:{report.thing}"
        if report.reported_model and report.model and report.reported_model != report.model:
            findings.append(
                Finding(
                    resource,
                    f"claims to be model {report.reported_model!r} but is judged as {report.model!r} "
                    "(its first report or the registry's model attribute)",
                    "medium",
                )
            )
        profile = snapshot.models.get(report.model or "")
        for port in report.tcp_ports:
            if port in TELNET_PORTS:
                findings.append(Finding(resource, f"Telnet listening on TCP {port}: a plaintext login", "critical"))
            elif profile is not None and port in profile.allowed_tcp_ports:
                continue
            elif port in SSH_PORTS:
                findings.append(Finding(resource, f"SSH listening on TCP {port}: a remote login in production", "high"))
            elif profile is not None:
                findings.append(
                    Finding(resource, f"TCP {port} is not in model {profile.name}'s allowed ports", "medium")
                )
        if profile is not None:
            findings.extend(
                Finding(resource, f"UDP {port} is not in model {profile.name}'s allowed ports", "medium")
                for port in report.udp_ports
                if port not in profile.allowed_udp_ports
            )
        elif report.tcp_ports or report.udp_ports:
            model = f"model {report.model!r} has" if report.model else "it reports no model, so it has"
            findings.append(Finding(resource, f"{model} no allowed-port list: its other ports go unjudged", "low"))
    return _result(DEVICE_OPEN_PORTS, findings)


def firmware_advisories(snapshot: AuditSnapshot) -> CheckResult:
    reporting = [r for r in snapshot.reports if r.firmware_version is not None]
    if not reporting:
        return CheckResult(FIRMWARE_ADVISORY, "not_applicable", note="no device has reported its firmware version")
    if not snapshot.advisories:
        return CheckResult(FIRMWARE_ADVISORY, "pass", note="no advisories are registered (thingward advisory add)")
    by_model: dict[str, list[AdvisoryFacts]] = defaultdict(list)
    for advisory in snapshot.advisories:
        by_model[advisory.model].append(advisory)
    # A fleet runs few distinct versions: each (range, version) pair is judged once.
    verdicts: dict[tuple[str, str], bool | None] = {}
    findings = []
    for report in reporting:
        for advisory in by_model.get(report.model or "", ()):
            version = report.firmware_version or ""
            key = (advisory.affected, version)
            if key not in verdicts:
                try:
                    verdicts[key] = SpecifierSet(advisory.affected).contains(Version(version), prereleases=True)
                except (InvalidVersion, InvalidSpecifier):
                    verdicts[key] = None
            affected = verdicts[key]
            if affected is None:
                findings.append(
                    Finding(
                        f"thing:{report.thing}",
                        f"firmware version {version!r} cannot be compared with {advisory.advisory_id}'s affected range",
                        "low",
                    )
                )
                continue
            if affected:
                findings.append(
                    Finding(
                        f"thing:{report.thing}",
                        f"{report.model} firmware {version} is affected by {advisory.advisory_id}"
                        f" (affected: {advisory.affected}){': ' + advisory.summary if advisory.summary else ''}",
                        advisory.severity,
                    )
                )
    return _result(FIRMWARE_ADVISORY, findings)


def onboarding_window_open(snapshot: AuditSnapshot) -> CheckResult:
    if not snapshot.reports:
        return CheckResult(ONBOARDING_WINDOW_OPEN, "not_applicable", note="no device has reported its state")
    limit = dt.timedelta(minutes=snapshot.onboarding_max_minutes)
    findings = []
    for report in snapshot.reports:
        if report.onboarding_state != "ap":
            continue
        resource = f"thing:{report.thing}"
        if report.onboarding_since is None:
            findings.append(Finding(resource, "in access point mode and does not say since when", "medium"))
        elif report.onboarding_since > snapshot.now + FUTURE_TOLERANCE:
            # A wrong clock (or a lie) must not pass as "just started": the window's length is unknown.
            findings.append(
                Finding(
                    resource,
                    f"in access point mode since {report.onboarding_since:%Y-%m-%d %H:%M} UTC, in the future: "
                    "its clock is wrong, so how long the window has been open is unknown",
                    "medium",
                )
            )
        elif snapshot.now - report.onboarding_since > limit:
            minutes = int((snapshot.now - report.onboarding_since).total_seconds() // 60)
            findings.append(
                Finding(resource, f"in access point mode for {minutes} min (limit {limit.seconds // 60} min)", "high")
            )
    return _result(ONBOARDING_WINDOW_OPEN, findings)


def stale_devices(snapshot: AuditSnapshot) -> CheckResult:
    horizon = dt.timedelta(days=snapshot.stale_days)
    findings = []
    for device in snapshot.devices:
        if device.disabled:
            continue
        seen = device.last_seen_at or device.created_at
        if snapshot.now - seen > horizon:
            what = f"last seen {seen:%Y-%m-%d}" if device.last_seen_at else f"never seen since {seen:%Y-%m-%d}"
            findings.append(Finding(f"thing:{device.name}", what, STALE_DEVICE.severity))
    return _result(STALE_DEVICE, findings)


def plaintext_listener(snapshot: AuditSnapshot) -> CheckResult:
    findings = []
    if snapshot.plaintext_port is not None:
        findings.append(
            Finding("config:mqtt.plaintext_port", f"plaintext MQTT on port {snapshot.plaintext_port}", "high")
        )
    return _result(PLAINTEXT_LISTENER, findings)


def ca_key_unencrypted(snapshot: AuditSnapshot) -> CheckResult:
    findings = [] if snapshot.ca_key_encrypted else [Finding("ca", "pki/ca.key is not encrypted at rest", "medium")]
    return _result(CA_KEY_UNENCRYPTED, findings)


def audit_log_tampered(snapshot: AuditSnapshot) -> CheckResult:
    findings = (
        [] if snapshot.audit_chain_intact else [Finding("audit_log", "the hash chain does not verify", "critical")]
    )
    return _result(AUDIT_LOG_TAMPERED, findings)


def users_without_2fa(snapshot: AuditSnapshot) -> CheckResult:
    if not snapshot.users:
        return CheckResult(USERS_WITHOUT_2FA, "not_applicable", note="there are no user accounts yet")
    everyone = snapshot.account_policy.require_2fa_everyone
    findings = []
    for user in snapshot.users:
        if user.has_2fa:
            continue
        if user.is_admin:
            findings.append(Finding(f"user:{user.email}", "an admin signs in without a second factor", "high"))
        else:
            why = "although [accounts] requires it for everyone" if everyone else "(allowed by the settings)"
            findings.append(
                Finding(
                    f"user:{user.email}", f"signs in without a second factor {why}", "medium" if everyone else "low"
                )
            )
    return _result(USERS_WITHOUT_2FA, findings)


def password_policy_weak(snapshot: AuditSnapshot) -> CheckResult:
    policy = snapshot.account_policy
    resource = "config:accounts"
    findings = []
    if policy.password_min_length < 8:
        findings.append(Finding(resource, f"minimum length {policy.password_min_length}: under NIST's 8", "high"))
    elif policy.password_min_length < 12:
        findings.append(Finding(resource, f"minimum length {policy.password_min_length}: under 12", "medium"))
    if policy.password_max_length < 64:
        findings.append(
            Finding(resource, f"passwords capped at {policy.password_max_length}: NIST asks to allow 64", "medium")
        )
    if policy.password_min_strength < 3:
        findings.append(
            Finding(resource, f"zxcvbn strength {policy.password_min_strength} accepted (baseline 3)", "medium")
        )
    if not policy.require_2fa_admins:
        findings.append(Finding(resource, "admins may sign in without a second factor", "high"))
    if policy.lockout_failures > 100:
        findings.append(Finding(resource, f"an account locks only after {policy.lockout_failures} failures", "medium"))
    return _result(PASSWORD_POLICY_WEAK, findings)


def audit_schedule_off(snapshot: AuditSnapshot) -> CheckResult:
    findings = []
    if snapshot.audit_interval_minutes <= 0:
        findings.append(Finding("config:audit.interval_minutes", "0: the server never audits by itself", "medium"))
    elif snapshot.audit_interval_minutes > 7 * 24 * 60:
        days = snapshot.audit_interval_minutes / (24 * 60)
        findings.append(Finding("config:audit.interval_minutes", f"an audit only every {days:.0f} days", "low"))
    return _result(AUDIT_SCHEDULE_OFF, findings)


def config_default_password(snapshot: AuditSnapshot) -> CheckResult:
    findings = [
        Finding(f"config:{where}", "the password is a known default or common password", "critical")
        for where, password in sorted(snapshot.config_passwords.items())
        if is_common(password)
    ]
    findings.extend(
        Finding(f"config:{where}", "a password sits in the settings in clear; pass it from outside", "medium")
        for where, password in sorted(snapshot.config_passwords.items())
        if not is_common(password)
    )
    return _result(CONFIG_DEFAULT_PASSWORD, findings)


SINGLE_CHECKS: tuple[Check, ...] = (
    device_certificates_expiring,
    ca_certificate_expiring,
    weak_device_keys,
    revoked_but_connected,
    shared_identity,
    stale_devices,
    plaintext_listener,
    ca_key_unencrypted,
    audit_log_tampered,
    audit_schedule_off,
    users_without_2fa,
    password_policy_weak,
    config_default_password,
    firmware_advisories,
    device_open_ports,
    onboarding_window_open,
)


def run_checks(snapshot: AuditSnapshot) -> list[CheckResult]:
    return [*policy_checks(snapshot), *(check(snapshot) for check in SINGLE_CHECKS)]
