"""What the audit works on and what it produces: a snapshot of facts in, check results out. No I/O here."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from thingward.errors import InvalidInputError
from thingward.live import SessionFacts, TakeoverFacts
from thingward.policy.world import PolicyWorld

Severity = Literal["critical", "high", "medium", "low"]
Part = Literal["device", "network", "cloud", "app"]
Status = Literal["pass", "fail", "not_applicable"]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")


SEVERITY_COLOURS = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}


def parse_severity(value: str | None) -> Severity | None:
    """A severity as typed on the command line (`--fail-on`); None stays None."""
    if value is None:
        return None
    for severity in SEVERITIES:
        if value == severity:
            return severity
    raise InvalidInputError(f"unknown severity {value!r}: use one of {', '.join(SEVERITIES)}")


def severity_rank(severity: Severity) -> int:
    """0 for critical, 3 for low: lower is worse."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class CheckInfo:
    id: str
    title: str
    severity: Severity
    part: Part
    remediation: str
    # Clause of each standard the weakness breaks: keys "etsi_en_303_645", "owasp_iot_top10", "uk_psti".
    references: Mapping[str, str]


@dataclass(frozen=True)
class Finding:
    resource: str
    message: str
    severity: Severity


@dataclass(frozen=True)
class CheckResult:
    info: CheckInfo
    status: Status
    findings: tuple[Finding, ...] = ()
    note: str = ""

    @property
    def severity(self) -> Severity:
        """The worst finding's severity when there are findings, else the check's own."""
        if not self.findings:
            return self.info.severity
        return min((f.severity for f in self.findings), key=severity_rank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.info.id,
            "title": self.info.title,
            "part": self.info.part,
            "severity": self.severity,
            "status": self.status,
            "note": self.note,
            "remediation": self.info.remediation,
            "references": dict(self.info.references),
            "findings": [{"resource": f.resource, "message": f.message, "severity": f.severity} for f in self.findings],
        }


@dataclass(frozen=True)
class CertificateFacts:
    thing: str
    serial: str
    status: str  # active | revoked
    not_after: dt.datetime
    key_type: str  # e.g. ec-secp256r1, rsa-2048
    public_key_sha256: str | None = None


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    disabled: bool
    created_at: dt.datetime
    last_seen_at: dt.datetime | None


@dataclass(frozen=True)
class ReportFacts:
    """A device's latest report about itself. `model` is the registry's `model` attribute when set."""

    thing: str
    received_at: dt.datetime
    model: str | None
    reported_model: str | None
    firmware_version: str | None
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    onboarding_state: str = "unknown"
    onboarding_since: dt.datetime | None = None


@dataclass(frozen=True)
class ModelFacts:
    name: str
    allowed_tcp_ports: frozenset[int]
    allowed_udp_ports: frozenset[int]


@dataclass(frozen=True)
class AdvisoryFacts:
    advisory_id: str
    model: str
    affected: str  # a version range such as "<1.4.2"
    severity: Severity
    summary: str = ""


@dataclass(frozen=True)
class UserFacts:
    email: str
    is_admin: bool
    has_2fa: bool


@dataclass(frozen=True)
class AccountPolicyFacts:
    """The [accounts] settings the audit judges against the baseline (NIST SP 800-63B, ETSI 5.1)."""

    password_min_length: int = 12
    password_max_length: int = 256
    password_min_strength: int = 3
    require_2fa_admins: bool = True
    require_2fa_everyone: bool = False
    lockout_failures: int = 10


@dataclass(frozen=True)
class AuditSnapshot:
    """Everything the checks look at, gathered at the edge (see `thingward.audit.gather`)."""

    now: dt.datetime
    world: PolicyWorld
    certificates: tuple[CertificateFacts, ...] = ()
    devices: tuple[DeviceFacts, ...] = ()
    ca_not_after: dt.datetime | None = None
    ca_key_encrypted: bool = False
    plaintext_port: int | None = None
    audit_chain_intact: bool = True
    expiry_days: int = 30
    stale_days: int = 30
    live_things: frozenset[str] | None = field(default=None)  # None: no running server was asked
    reports: tuple[ReportFacts, ...] = ()
    models: Mapping[str, ModelFacts] = field(default_factory=dict)
    advisories: tuple[AdvisoryFacts, ...] = ()
    sessions: tuple[SessionFacts, ...] | None = None  # None: no running server was asked
    takeovers: tuple[TakeoverFacts, ...] = ()
    onboarding_max_minutes: int = 15
    users: tuple[UserFacts, ...] | None = None  # None: the registry has no user accounts table
    account_policy: AccountPolicyFacts = field(default_factory=AccountPolicyFacts)
    config_passwords: Mapping[str, str] = field(default_factory=dict)  # where -> the password found there
    audit_interval_minutes: float = 1440.0  # [audit] interval_minutes: 0 means no scheduled audit


FINDING_ID_LENGTH = 10


def finding_id(check_id: str, resource: str) -> str:
    """A short id for what a check found on one resource: the same on every run while the finding lasts.

    Derived from the check and the resource only (never the message, which carries dates and counts), so
    suppressions, history and mitigation can name a finding across runs.
    """
    digest = hashlib.sha256(f"{check_id}\x00{resource}".encode()).hexdigest()
    return digest[:FINDING_ID_LENGTH]
