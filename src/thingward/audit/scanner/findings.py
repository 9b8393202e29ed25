"""The bridge from a scan to the audit: scan results as `CheckResult`s of the network part, with
severities, remediation and the clauses of ETSI EN 303 645 and the OWASP IoT Top 10 they break.

Passwords never enter the audit report (it travels as JSON, SARIF and HTML): a finding names the
username and the service; the scan's own output has the pair.
"""

from __future__ import annotations

from thingward.audit.model import CheckInfo, CheckResult, Finding, Severity
from thingward.audit.scanner.model import PortResult, ScanReport

ETSI = "etsi_en_303_645"
OWASP = "owasp_iot_top10"
PSTI = "uk_psti"

NETWORK_DEFAULT_CREDENTIALS = CheckInfo(
    id="NETWORK_DEFAULT_CREDENTIALS",
    title="A network service accepts a default or publicly known login",
    severity="critical",
    part="network",
    remediation="Change the password to a unique one per device, or turn the service off; ship devices without "
    "universal default passwords.",
    references={
        ETSI: "5.1 No universal default passwords",
        OWASP: "I1 Weak, Guessable, or Hardcoded Passwords",
        PSTI: "1 Passwords",
    },
)
NETWORK_ANONYMOUS_ACCESS = CheckInfo(
    id="NETWORK_ANONYMOUS_ACCESS",
    title="An MQTT broker accepts clients without any credentials",
    severity="high",
    part="network",
    remediation="Set allow_anonymous false and require client certificates (or at least per-device passwords).",
    references={
        ETSI: "5.1 No universal default passwords",
        OWASP: "I2 Insecure Network Services",
    },
)
NETWORK_INSECURE_SERVICE = CheckInfo(
    id="NETWORK_INSECURE_SERVICE",
    title="A device exposes a remote shell service meant for debugging (Telnet)",
    severity="high",
    part="network",
    remediation="Remove Telnet from the firmware; use SSH with keys for maintenance, if at all.",
    references={ETSI: "5.6 Minimize exposed attack surfaces", OWASP: "I2 Insecure Network Services"},
)
NETWORK_PLAINTEXT_PROTOCOL = CheckInfo(
    id="NETWORK_PLAINTEXT_PROTOCOL",
    title="A service speaks a plaintext protocol (MQTT, HTTP, RTSP, Telnet without TLS)",
    severity="medium",
    part="network",
    remediation="Serve it over TLS only (MQTTS on 8883, HTTPS, RTSPS) and close the plaintext port.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I7 Insecure Data Transfer and Storage"},
)
NETWORK_WEAK_TLS = CheckInfo(
    id="NETWORK_WEAK_TLS",
    title="A TLS service accepts old protocol versions or presents an expired or self-signed certificate",
    severity="medium",
    part="network",
    remediation="Accept TLS 1.2 and 1.3 only; serve a current certificate from a CA the clients pin.",
    references={ETSI: "5.5 Communicate securely", OWASP: "I7 Insecure Data Transfer and Storage"},
)
NETWORK_OPEN_PORTS = CheckInfo(
    id="NETWORK_OPEN_PORTS",
    title="Open ports found on the scanned hosts (the network attack surface)",
    severity="low",
    part="network",
    remediation="Close every port the product does not need; each open port is a way in.",
    references={ETSI: "5.6 Minimize exposed attack surfaces", OWASP: "I2 Insecure Network Services"},
)

NETWORK_CHECKS = (
    NETWORK_DEFAULT_CREDENTIALS,
    NETWORK_ANONYMOUS_ACCESS,
    NETWORK_INSECURE_SERVICE,
    NETWORK_PLAINTEXT_PROTOCOL,
    NETWORK_WEAK_TLS,
    NETWORK_OPEN_PORTS,
)

_PLAINTEXT = frozenset({"telnet", "mqtt", "http", "upnp", "rtsp", "ftp"})


def _where(address: str, port: PortResult) -> str:
    return f"{address}:{port.port}/{port.protocol} ({port.service})"


def _tls_findings(address: str, port: PortResult) -> list[Finding]:
    tls = port.tls
    if tls is None:
        return []
    where = _where(address, port)
    findings = []
    if tls.old_versions:
        findings.append(Finding(where, f"accepts {', '.join(tls.old_versions)}", "medium"))
    if tls.expired:
        when = f" ({tls.not_after:%Y-%m-%d})" if tls.not_after else ""
        findings.append(Finding(where, f"certificate expired or not yet valid{when}: {tls.subject}", "high"))
    if tls.self_signed:
        findings.append(Finding(where, f"self-signed certificate: {tls.subject}", "medium"))
    return findings


def scan_to_check_results(report: ScanReport) -> list[CheckResult]:
    """Every network check, passed or failed, for the hosts of one scan."""
    found: dict[str, list[Finding]] = {info.id: [] for info in NETWORK_CHECKS}
    for host in report.hosts:
        for port in host.ports:
            where = _where(host.address, port)
            for weak in port.weak_credentials:
                if weak.anonymous:
                    found[NETWORK_ANONYMOUS_ACCESS.id].append(Finding(where, "accepts anonymous clients", "high"))
                else:
                    user = weak.username or "(empty username)"
                    found[NETWORK_DEFAULT_CREDENTIALS.id].append(
                        Finding(where, f"logs in user {user!r} with a password from the default list", "critical")
                    )
            if port.service == "telnet":
                found[NETWORK_INSECURE_SERVICE.id].append(Finding(where, "Telnet is open", "high"))
            if port.protocol == "tcp" and port.service in _PLAINTEXT:
                found[NETWORK_PLAINTEXT_PROTOCOL.id].append(
                    Finding(where, f"{port.service} without TLS", _plaintext_severity(port))
                )
            found[NETWORK_WEAK_TLS.id].extend(_tls_findings(host.address, port))
        if host.ports:
            listing = ", ".join(f"{p.port}/{p.protocol} {p.service}" for p in host.ports)
            found[NETWORK_OPEN_PORTS.id].append(Finding(host.address, f"open: {listing}", "low"))
    note = f"scanned {len(report.targets)} host(s), {report.ports_scanned} TCP port(s)" + (
        "" if report.credentials_checked else "; default logins not tried (scan --credentials)"
    )
    results = []
    for info in NETWORK_CHECKS:
        if info is NETWORK_DEFAULT_CREDENTIALS and not report.credentials_checked:
            results.append(CheckResult(info=info, status="not_applicable", note="run the scan with --credentials"))
            continue
        findings = tuple(found[info.id])
        results.append(CheckResult(info=info, status="fail" if findings else "pass", findings=findings, note=note))
    return results


def _plaintext_severity(port: PortResult) -> Severity:
    # A plaintext service that also takes a login sends that login in the clear.
    return "high" if port.weak_credentials or port.service == "telnet" else "medium"
