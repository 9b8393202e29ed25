"""Read back a saved scan (`thingward scan --json > scan.json`) so the audit can judge it.

The file is input from outside: it is parsed strictly against the version 1 shape (see `model.py`), and
a mistake is reported with where it is, not half-loaded.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thingward.audit.scanner.model import HostResult, PortResult, ScanReport, TlsInfo, WeakCredential
from thingward.errors import InvalidInputError
from thingward.validation import first_problem

MAX_SCAN_FILE_BYTES = 64 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Tls(_Strict):
    versions: list[str] = Field(default_factory=list)
    subject: str = ""
    issuer: str = ""
    not_after: dt.datetime | None = None
    expired: bool = False
    self_signed: bool = False
    error: str = ""


class _Credential(_Strict):
    service: str
    username: str
    password: str
    anonymous: bool = False


class _Port(_Strict):
    port: int = Field(ge=0, le=65535)
    protocol: Literal["tcp", "udp"]
    service: str
    banner: str = ""
    notes: list[str] = Field(default_factory=list)
    tls: _Tls | None = None
    weak_credentials: list[_Credential] = Field(default_factory=list)


class _Host(_Strict):
    address: str
    ports: list[_Port]


class _Report(_Strict):
    version: Literal[1]
    started_at: dt.datetime
    duration_s: float
    targets: list[str]
    ports_scanned: int
    credentials_checked: bool
    login_attempts: int
    hosts: list[_Host]


def load_scan_report(data: bytes) -> ScanReport:
    """A scan report from its JSON (version 1); InvalidInputError says what is wrong and where."""
    if len(data) > MAX_SCAN_FILE_BYTES:
        raise InvalidInputError(f"the scan file is over {MAX_SCAN_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        raw = _Report.model_validate_json(data)
    except ValidationError as e:
        raise InvalidInputError(
            f"not a thingward scan report (thingward scan --json, version 1): {first_problem(e, 'file')}"
        ) from None
    return ScanReport(
        started_at=raw.started_at,
        duration_s=raw.duration_s,
        targets=tuple(raw.targets),
        ports_scanned=raw.ports_scanned,
        credentials_checked=raw.credentials_checked,
        login_attempts=raw.login_attempts,
        hosts=tuple(
            HostResult(
                address=host.address,
                ports=tuple(
                    PortResult(
                        port=port.port,
                        protocol=port.protocol,
                        service=port.service,
                        banner=port.banner,
                        notes=tuple(port.notes),
                        tls=TlsInfo(
                            versions=tuple(port.tls.versions),
                            subject=port.tls.subject,
                            issuer=port.tls.issuer,
                            not_after=port.tls.not_after,
                            expired=port.tls.expired,
                            self_signed=port.tls.self_signed,
                            error=port.tls.error,
                        )
                        if port.tls
                        else None,
                        weak_credentials=tuple(
                            WeakCredential(c.service, c.username, c.password, c.anonymous)
                            for c in port.weak_credentials
                        ),
                    )
                    for port in host.ports
                ),
            )
            for host in raw.hosts
        ),
    )
