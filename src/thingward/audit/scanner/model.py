"""What a scan found, as frozen values, and its JSON shape (`ScanReport.to_dict`, version 1).

JSON shape, stable within a version:
{
  "version": 1, "started_at": ISO-8601, "duration_s": float, "targets": [address...],
  "ports_scanned": int, "credentials_checked": bool, "login_attempts": int,
  "hosts": [{"address": str, "ports": [{
      "port": int, "protocol": "tcp" | "udp", "service": str, "banner": str,
      "notes": [str...],
      "tls": null | {"versions": ["TLSv1.2", ...], "subject": str, "issuer": str, "not_after": ISO-8601,
                     "expired": bool, "self_signed": bool, "error": str},
      "weak_credentials": [{"service": str, "username": str, "password": str, "anonymous": bool}]
  }]}]
}
Hosts that answered nothing are left out. A weak credential is the pair that logged in, shown in full as
nmap and Nessus do: it came from the credential list, so it is a default, not a secret of the user's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

Protocol = Literal["tcp", "udp"]

OLD_TLS_VERSIONS = ("TLSv1", "TLSv1.1")


@dataclass(frozen=True)
class TlsInfo:
    versions: tuple[str, ...] = ()  # the protocol versions the server accepted
    subject: str = ""
    issuer: str = ""
    not_after: dt.datetime | None = None
    expired: bool = False
    self_signed: bool = False
    error: str = ""  # why the handshake failed, if it did

    @property
    def old_versions(self) -> tuple[str, ...]:
        return tuple(v for v in self.versions if v in OLD_TLS_VERSIONS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": list(self.versions),
            "subject": self.subject,
            "issuer": self.issuer,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "expired": self.expired,
            "self_signed": self.self_signed,
            "error": self.error,
        }


@dataclass(frozen=True)
class WeakCredential:
    service: str
    username: str
    password: str
    anonymous: bool = False  # logged in with no credentials at all (MQTT)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "username": self.username,
            "password": self.password,
            "anonymous": self.anonymous,
        }


@dataclass(frozen=True)
class PortResult:
    port: int
    protocol: Protocol
    service: str  # telnet, ssh, http, https, rtsp, rtsps, mqtt, mqtts, coap, ssdp, mdns, tls, unknown
    banner: str = ""
    tls: TlsInfo | None = None
    weak_credentials: tuple[WeakCredential, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "protocol": self.protocol,
            "service": self.service,
            "banner": self.banner,
            "notes": list(self.notes),
            "tls": self.tls.to_dict() if self.tls else None,
            "weak_credentials": [c.to_dict() for c in self.weak_credentials],
        }


@dataclass(frozen=True)
class HostResult:
    address: str
    ports: tuple[PortResult, ...]

    def open_ports(self, protocol: Protocol = "tcp") -> set[int]:
        return {p.port for p in self.ports if p.protocol == protocol}

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "ports": [p.to_dict() for p in self.ports]}


@dataclass(frozen=True)
class ScanReport:
    started_at: dt.datetime
    duration_s: float
    targets: tuple[str, ...]
    ports_scanned: int
    credentials_checked: bool
    login_attempts: int
    hosts: tuple[HostResult, ...]

    def host(self, address: str) -> HostResult | None:
        return next((h for h in self.hosts if h.address == address), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "targets": list(self.targets),
            "ports_scanned": self.ports_scanned,
            "credentials_checked": self.credentials_checked,
            "login_attempts": self.login_attempts,
            "hosts": [h.to_dict() for h in self.hosts],
        }
