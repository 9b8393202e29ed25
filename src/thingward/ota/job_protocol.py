"""The OTA job wire format: the job document the server sends, and the status a device reports.

Server -> device, on `things/NAME/commands/ota` (retained, QoS 1): the device's current job, or its
cancellation. Device -> server, on `things/NAME/update/status` (QoS 1): one state of that job. Both ends
parse what they receive strictly (bounded size, known fields and states only); both are plain JSON so a
device written in C can speak them.

    {"type": "ota.job", "operation": "update", "job_id": 7, "attempt": 1, "campaign_id": 2,
     "model": "cam", "version": "1.4.2", "target": "cam/1.4.2.img", "timeout_seconds": 600}
    {"type": "ota.job", "operation": "cancel", "job_id": 7, "attempt": 1}
    {"job_id": 7, "attempt": 1, "state": "in_progress", "substate": "downloading", "version": "1.4.1"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from thingward.errors import InvalidInputError
from thingward.validation import first_problem

__all__ = [
    "DEVICE_STATES",
    "FINAL_STATES",
    "JOB_STATES",
    "MAX_DOCUMENT_BYTES",
    "MAX_STATUS_BYTES",
    "SUBSTATES",
    "JobDocument",
    "StatusReport",
    "job_topic",
    "parse_job_document",
    "parse_status_report",
    "status_topic",
    "thing_of_status_topic",
]

MAX_DOCUMENT_BYTES = 2048
MAX_STATUS_BYTES = 1024
MAX_REASON = 256

JobState = Literal["queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "canceled"]
JOB_STATES: tuple[str, ...] = ("queued", "in_progress", "succeeded", "failed", "timed_out", "rejected", "canceled")
FINAL_STATES = frozenset({"succeeded", "failed", "timed_out", "rejected", "canceled"})
# What a device may say; queued, timed_out and canceled are the server's to decide.
DeviceState = Literal["in_progress", "succeeded", "failed", "rejected"]
DEVICE_STATES: tuple[str, ...] = ("in_progress", "succeeded", "failed", "rejected")
Substate = Literal["downloading", "verifying", "installing", "rebooting"]
SUBSTATES: tuple[str, ...] = ("downloading", "verifying", "installing", "rebooting")

_VERSION = Field(default=None, min_length=1, max_length=64, pattern=r"^[0-9A-Za-z.!+_-]+$")
_ID = Field(ge=1, le=2**53)


def job_topic(thing: str) -> str:
    return f"things/{thing}/commands/ota"


def status_topic(thing: str) -> str:
    return f"things/{thing}/update/status"


def thing_of_status_topic(topic: str) -> str | None:
    """The thing a status topic names, or None when `topic` is not a status topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "things" and parts[2:] == ["update", "status"] and parts[1]:
        return parts[1]
    return None


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["ota.job"]
    operation: Literal["update", "cancel"]
    job_id: int = _ID
    attempt: int = Field(ge=1, le=1000)
    campaign_id: int | None = Field(default=None, ge=1)
    model: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str | None = _VERSION
    target: str | None = Field(default=None, min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_./-]+$")
    timeout_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    job_id: int = _ID
    attempt: int = Field(ge=1, le=1000)
    state: DeviceState
    substate: Substate | None = None
    version: str | None = _VERSION
    reason: str = Field(default="", max_length=MAX_REASON, pattern=r"^[^\x00-\x1f\x7f]*$")


@dataclass(frozen=True)
class JobDocument:
    operation: Literal["update", "cancel"]
    job_id: int
    attempt: int
    campaign_id: int | None = None
    model: str | None = None
    version: str | None = None
    target: str | None = None
    timeout_seconds: int | None = None

    def to_payload(self) -> bytes:
        body: dict[str, object] = {
            "type": "ota.job",
            "operation": self.operation,
            "job_id": self.job_id,
            "attempt": self.attempt,
        }
        if self.operation == "update":
            body.update(
                campaign_id=self.campaign_id,
                model=self.model,
                version=self.version,
                target=self.target,
                timeout_seconds=self.timeout_seconds,
            )
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class StatusReport:
    job_id: int
    attempt: int
    state: str
    substate: str | None = None
    version: str | None = None
    reason: str = ""

    def to_payload(self) -> bytes:
        body: dict[str, object] = {"job_id": self.job_id, "attempt": self.attempt, "state": self.state}
        if self.substate is not None:
            body["substate"] = self.substate
        if self.version is not None:
            body["version"] = self.version
        if self.reason:
            body["reason"] = self.reason[:MAX_REASON]
        return json.dumps(body, separators=(",", ":")).encode()


def parse_job_document(payload: bytes) -> JobDocument:
    """A job document as the device receives it; InvalidInputError says what is wrong with it."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise InvalidInputError(f"job document of {len(payload)} bytes is over {MAX_DOCUMENT_BYTES}")
    try:
        raw = _Document.model_validate_json(payload)
    except ValidationError as e:
        raise InvalidInputError(f"job document: {first_problem(e, 'document')}") from None
    if raw.operation == "update" and (raw.model is None or raw.version is None or raw.target is None):
        raise InvalidInputError("job document: an update names its model, version and target")
    return JobDocument(
        raw.operation,
        raw.job_id,
        raw.attempt,
        raw.campaign_id,
        raw.model,
        raw.version,
        raw.target,
        raw.timeout_seconds,
    )


def parse_status_report(payload: bytes) -> StatusReport:
    """A device's status report, bounded and with known states only; InvalidInputError otherwise."""
    if len(payload) > MAX_STATUS_BYTES:
        raise InvalidInputError(f"status report of {len(payload)} bytes is over {MAX_STATUS_BYTES}")
    try:
        raw = _Status.model_validate_json(payload)
    except ValidationError as e:
        raise InvalidInputError(f"status report: {first_problem(e, 'report')}") from None
    if raw.substate is not None and raw.state != "in_progress":
        raise InvalidInputError(f"status report: a substate belongs to in_progress, not {raw.state}")
    return StatusReport(raw.job_id, raw.attempt, raw.state, raw.substate, raw.version, raw.reason)
