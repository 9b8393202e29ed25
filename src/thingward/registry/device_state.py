"""What devices say about themselves, and what we know about their models.

A device reports its firmware, its listening ports and its onboarding state on `things/NAME/state`; the
platform keeps the latest report per thing (no history: telemetry is for that). Device models say which
ports their devices may listen on, and firmware advisories say which versions of a model are weak. The
audit reads all three. Reports come from devices, so they are parsed strictly and bounded; model and
advisory changes come from operators and are recorded in the audit log.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.names import validate_name
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import DeviceModel, DeviceReport, FirmwareAdvisory, Thing, ThingAttribute
from thingward.validation import first_problem

MAX_REPORT_BYTES = 16 * 1024
MAX_PORTS = 1024
SEVERITIES = ("critical", "high", "medium", "low")
# A thing attribute that, when set by an operator, names the thing's model over what the device reports:
# a device must not choose the profile it is judged by.
MODEL_ATTRIBUTE = "model"
OnboardingState = Literal["unknown", "unprovisioned", "ap", "provisioned"]

_Port = Annotated[int, Field(ge=1, le=65535)]


class _Firmware(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # No control characters: a NUL makes PostgreSQL refuse the whole ingest batch it is in.
    version: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")


class _Ports(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tcp: list[_Port] = Field(default_factory=list, max_length=MAX_PORTS)
    udp: list[_Port] = Field(default_factory=list, max_length=MAX_PORTS)


class _Onboarding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: OnboardingState
    since: dt.datetime | None = None


class _StateReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    firmware: _Firmware | None = None
    ports: _Ports | None = None
    onboarding: _Onboarding | None = None


@dataclass(frozen=True)
class StateReport:
    """A parsed, bounded device state report."""

    model: str | None
    firmware_version: str | None
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    onboarding_state: str
    onboarding_since: dt.datetime | None

    def to_dict(self) -> dict[str, object]:
        return {
            "firmware": {"model": self.model, "version": self.firmware_version},
            "ports": {"tcp": list(self.tcp_ports), "udp": list(self.udp_ports)},
            "onboarding": {
                "state": self.onboarding_state,
                "since": self.onboarding_since.isoformat() if self.onboarding_since else None,
            },
        }


def _ports(values: Iterable[int]) -> tuple[int, ...]:
    ports = tuple(sorted(set(values)))
    for port in ports:
        if not 1 <= port <= 65535:
            raise InvalidInputError(f"port {port} is outside 1-65535")
    return ports


def parse_state_report(payload: bytes) -> StateReport:
    """Parse a device's state report; InvalidInputError says what is wrong with it."""
    if len(payload) > MAX_REPORT_BYTES:
        raise InvalidInputError(f"state report of {len(payload)} bytes is over the {MAX_REPORT_BYTES}-byte limit")
    try:
        raw = _StateReport.model_validate_json(payload)
    except ValidationError as e:
        raise InvalidInputError(f"state report: {first_problem(e, 'report')}") from None
    since = raw.onboarding.since if raw.onboarding else None
    if since is not None and since.tzinfo is None:
        raise InvalidInputError("state report: onboarding.since must carry a time zone (e.g. ...Z)")
    return StateReport(
        model=raw.firmware.model if raw.firmware else None,
        firmware_version=raw.firmware.version if raw.firmware else None,
        tcp_ports=_ports(raw.ports.tcp) if raw.ports else (),
        udp_ports=_ports(raw.ports.udp) if raw.ports else (),
        onboarding_state=raw.onboarding.state if raw.onboarding else "unknown",
        onboarding_since=since.astimezone(dt.UTC) if since else None,
    )


def store_report(session: Session, thing_id: int, report: StateReport, received_at: dt.datetime) -> None:
    """Keep `report` as the thing's latest. Not an audit event: devices report often, operators change little."""
    row = session.get(DeviceReport, thing_id)
    if row is None:
        row = DeviceReport(thing_id=thing_id)
        session.add(row)
    row.received_at = received_at
    if row.pinned_model is None:
        row.pinned_model = report.model
    row.model = report.model
    row.firmware_version = report.firmware_version
    row.tcp_ports = json.dumps(list(report.tcp_ports))
    row.udp_ports = json.dumps(list(report.udp_ports))
    row.onboarding_state = report.onboarding_state
    row.onboarding_since = report.onboarding_since


@dataclass(frozen=True)
class LatestReport:
    thing: str
    received_at: dt.datetime
    report: StateReport
    # Whom the device is judged as: the registry's `model` attribute when set, else the first model it
    # ever reported (pinned), never a later claim.
    model: str | None


def _stored_ports(text: str) -> tuple[int, ...]:
    """A port list as `store_report` wrote it ("[23, 443]"), read without a JSON parser: the audit reads 100k."""
    inner = text.strip()[1:-1]
    if not inner.strip():
        return ()
    try:
        return tuple(int(part) for part in inner.split(","))
    except ValueError:
        return tuple(json.loads(text))


def _latest(session: Session, thing_name: str | None) -> list[LatestReport]:
    # Columns and an outer join, not ORM objects and a subquery per row: the audit reads every report.
    query = (
        select(
            Thing.name,
            DeviceReport.received_at,
            DeviceReport.model,
            DeviceReport.pinned_model,
            DeviceReport.firmware_version,
            DeviceReport.tcp_ports,
            DeviceReport.udp_ports,
            DeviceReport.onboarding_state,
            DeviceReport.onboarding_since,
            ThingAttribute.value,
        )
        .join(Thing, Thing.id == DeviceReport.thing_id)
        .outerjoin(
            ThingAttribute,
            (ThingAttribute.thing_id == DeviceReport.thing_id) & (ThingAttribute.key == MODEL_ATTRIBUTE),
        )
        .order_by(Thing.name)
    )
    if thing_name is not None:
        query = query.where(Thing.name == thing_name)
    out = []
    for (
        name,
        received_at,
        model,
        pinned,
        version,
        tcp,
        udp,
        onboarding,
        since,
        attribute,
    ) in session.connection().execute(query):
        report = StateReport(
            model=model,
            firmware_version=version,
            tcp_ports=_stored_ports(tcp),
            udp_ports=_stored_ports(udp),
            onboarding_state=onboarding,
            onboarding_since=since,
        )
        out.append(LatestReport(name, received_at, report, attribute or pinned or model))
    return out


def latest_reports(session: Session) -> list[LatestReport]:
    return _latest(session, None)


def latest_report(session: Session, thing_name: str) -> LatestReport | None:
    found = _latest(session, thing_name)
    return found[0] if found else None


# -- device models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    name: str
    description: str
    allowed_tcp_ports: tuple[int, ...]
    allowed_udp_ports: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "allowed_tcp_ports": list(self.allowed_tcp_ports),
            "allowed_udp_ports": list(self.allowed_udp_ports),
        }


def _profile(row: DeviceModel) -> ModelProfile:
    return ModelProfile(
        row.name, row.description, tuple(json.loads(row.allowed_tcp_ports)), tuple(json.loads(row.allowed_udp_ports))
    )


def set_model(
    session: Session,
    actor: Actor,
    name: str,
    allowed_tcp_ports: Sequence[int],
    allowed_udp_ports: Sequence[int],
    description: str = "",
) -> ModelProfile:
    """Create or replace a device model's profile."""
    validate_name(name, "model")
    tcp, udp = _ports(allowed_tcp_ports), _ports(allowed_udp_ports)
    row = session.execute(select(DeviceModel).where(DeviceModel.name == name)).scalar_one_or_none()
    if row is None:
        row = DeviceModel(name=name)
        session.add(row)
    row.description = description
    row.allowed_tcp_ports = json.dumps(list(tcp))
    row.allowed_udp_ports = json.dumps(list(udp))
    row.updated_at = dt.datetime.now(dt.UTC)
    record_event(session, actor, "model.set", f"model:{name}", {"tcp": list(tcp), "udp": list(udp)})
    return _profile(row)


def list_models(session: Session) -> list[ModelProfile]:
    return [_profile(row) for row in session.execute(select(DeviceModel).order_by(DeviceModel.name)).scalars()]


def get_model(session: Session, name: str) -> ModelProfile:
    row = session.execute(select(DeviceModel).where(DeviceModel.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no device model {name!r}: add it with 'thingward model set {name} --tcp ...'")
    return _profile(row)


# -- firmware advisories -----------------------------------------------------------------------------


def parse_affected(text: str) -> SpecifierSet:
    """A version range such as "<1.4.2" or ">=1.0,<1.4.2" (PEP 440 specifiers)."""
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        raise InvalidInputError(
            f"affected versions {text!r}: write a range such as '<1.4.2' or '>=1.0,<1.4.2'"
        ) from None
    if not str(spec):
        raise InvalidInputError("affected versions: the range is empty; write e.g. '<1.4.2'")
    return spec


def version_affected(version: str, affected: str) -> bool | None:
    """True if `version` is in the `affected` range; None when the device's version cannot be compared."""
    try:
        return SpecifierSet(affected).contains(Version(version), prereleases=True)
    except (InvalidVersion, InvalidSpecifier):
        return None


@dataclass(frozen=True)
class Advisory:
    advisory_id: str
    model: str
    affected: str
    severity: str
    summary: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.advisory_id,
            "model": self.model,
            "affected": self.affected,
            "severity": self.severity,
            "summary": self.summary,
        }


def _advisory(row: FirmwareAdvisory) -> Advisory:
    return Advisory(row.advisory_id, row.model, row.affected, row.severity, row.summary)


def add_advisory(
    session: Session, actor: Actor, advisory_id: str, model: str, affected: str, severity: str, summary: str = ""
) -> Advisory:
    if not advisory_id or len(advisory_id) > 64 or not advisory_id.replace("-", "").replace("_", "").isalnum():
        raise InvalidInputError(f"advisory id {advisory_id!r}: use letters, digits, '-' and '_' (e.g. CVE-2026-1234)")
    validate_name(model, "model")
    affected = str(parse_affected(affected))
    if severity not in SEVERITIES:
        raise InvalidInputError(f"severity {severity!r}: choose one of {', '.join(SEVERITIES)}")
    if len(summary) > 512:
        raise InvalidInputError("advisory summary is over 512 characters")
    exists = session.execute(select(FirmwareAdvisory).where(FirmwareAdvisory.advisory_id == advisory_id)).first()
    if exists is not None:
        raise ConflictError(f"advisory {advisory_id!r} exists already")
    row = FirmwareAdvisory(
        advisory_id=advisory_id,
        model=model,
        affected=affected,
        severity=severity,
        summary=summary,
        created_at=dt.datetime.now(dt.UTC),
    )
    session.add(row)
    record_event(session, actor, "advisory.add", f"advisory:{advisory_id}", {"model": model, "affected": affected})
    return _advisory(row)


def remove_advisory(session: Session, actor: Actor, advisory_id: str) -> None:
    row = session.execute(
        select(FirmwareAdvisory).where(FirmwareAdvisory.advisory_id == advisory_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no advisory {advisory_id!r}")
    session.delete(row)
    record_event(session, actor, "advisory.remove", f"advisory:{advisory_id}")


def list_advisories(session: Session) -> list[Advisory]:
    rows = session.execute(select(FirmwareAdvisory).order_by(FirmwareAdvisory.advisory_id)).scalars()
    return [_advisory(row) for row in rows]


def get_advisory(session: Session, advisory_id: str) -> Advisory:
    row = session.execute(
        select(FirmwareAdvisory).where(FirmwareAdvisory.advisory_id == advisory_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no advisory {advisory_id!r}: see 'thingward ota advisory list'")
    return _advisory(row)


@dataclass(frozen=True)
class AffectedDevice:
    thing: str
    model: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"thing": self.thing, "model": self.model, "version": self.version}


def affected_devices(advisory: Advisory, reports: Iterable[LatestReport]) -> list[AffectedDevice]:
    """Devices of the advisory's model whose latest reported version is in its affected range."""
    out = []
    for latest in reports:
        version = latest.report.firmware_version
        if latest.model != advisory.model or version is None:
            continue
        if version_affected(version, advisory.affected):
            out.append(AffectedDevice(latest.thing, advisory.model, version))
    return out
