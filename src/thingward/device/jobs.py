"""The device's OTA job agent: hears its job on MQTT, runs the updater, reports every state, survives restarts.

    subscribe things/NAME/commands/ota (retained: a late device still gets its job)
      -> job document (parsed strictly) -> in_progress: downloading, verifying, installing (FirmwareUpdater:
         TUF-verified download into the inactive slot, marked to boot once)
      -> in_progress: rebooting, and the agent restarts
      -> at start, the trial boot: the health check is "reach the broker with this identity and get a report
         acknowledged" (plus, for simulated devices, a check of the image) -> confirm: succeeded; or roll back
         by itself: failed
    An image older than the running one, for another model, or failing any signature/hash check: rejected.

The agent keeps a small journal (`DEVICE_DIR/jobs.json`, written atomically): the job it is on and in which
phase, and the jobs it finished. Killed at any point, the next start carries on: a download resumes where
it broke off, an installed image gets its trial boot, a finished job is not run again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from thingward.device.client import Device, DeviceConnectError
from thingward.device.state import DeviceState
from thingward.device.update import BootOutcome, FirmwareUpdater, UpdateError, UpdateOutcome, UpdateRefusedError
from thingward.errors import InvalidInputError
from thingward.ota.job_protocol import JobDocument, StatusReport, job_topic, parse_job_document, status_topic
from thingward.pki.files import write_atomic

__all__ = ["JOURNAL_FILE", "AgentStats", "ImageCheck", "JobAgent"]

logger = logging.getLogger(__name__)

JOURNAL_FILE = "jobs.json"
DONE_KEPT = 50  # finished jobs remembered, so a re-delivered document is not run twice
RECONNECT_DELAY = (0.5, 10.0)  # seconds: the first and the longest wait between connect attempts

ImageCheck = Callable[[Path], bool]


@dataclass
class _Journal:
    job: dict[str, Any] | None = None  # the JobDocument being worked on
    phase: str = ""  # "running" (download/install under way) or "rebooting" (installed, trial boot next)
    done: list[list[int]] = field(default_factory=list)  # [job_id, attempt] of finished jobs, newest last

    def finished(self, job_id: int, attempt: int) -> bool:
        return [job_id, attempt] in self.done

    def finish(self, job_id: int, attempt: int) -> None:
        self.job, self.phase = None, ""
        if [job_id, attempt] not in self.done:
            self.done = [*self.done, [job_id, attempt]][-DONE_KEPT:]


@dataclass
class AgentStats:
    reports: list[tuple[int, int, str, str | None]] = field(default_factory=list)  # job, attempt, state, substate
    restarts: int = 0
    refused_documents: int = 0
    last_update: UpdateOutcome | None = None

    @property
    def last_state(self) -> str | None:
        return self.reports[-1][2] if self.reports else None


class JobAgent:
    """The OTA job agent of one device. `start()` runs it in a thread of its own; `stop()` ends it."""

    def __init__(
        self,
        name: str,
        identity_dir: Path,
        updater: FirmwareUpdater,
        host: str,
        port: int,
        *,
        image_check: ImageCheck | None = None,
        timeout: float = 10.0,
        restart_after_install: bool = True,
    ) -> None:
        self.name = name
        self.identity_dir = identity_dir
        self.updater = updater
        self.host, self.port = host, port
        # A real device boots the image and sees whether it runs; a simulated one asks this instead.
        self.image_check = image_check or (lambda _slot: True)
        self.timeout = timeout
        # False: stop right after installing, as a device losing power at its reboot would (for tests).
        self.restart_after_install = restart_after_install
        self.journal_path = updater.device_dir / JOURNAL_FILE
        self.stats = AgentStats()
        self._documents: queue.Queue[JobDocument] = queue.Queue(maxsize=100)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._device: Device | None = None
        self.connected = threading.Event()

    # -- journal -------------------------------------------------------------------------------------------

    def _load(self) -> _Journal:
        try:
            raw = json.loads(self.journal_path.read_text())
            return _Journal(raw.get("job"), str(raw.get("phase", "")), [list(p) for p in raw.get("done", [])])
        except FileNotFoundError:
            return _Journal()
        except (ValueError, TypeError, AttributeError):
            logger.warning("%s: the job journal is unreadable; starting with an empty one", self.name)
            return _Journal()

    def _save(self, journal: _Journal) -> None:
        write_atomic(self.journal_path, json.dumps(asdict(journal)).encode())

    # -- MQTT ------------------------------------------------------------------------------------------------

    def _on_command(self, topic: str, payload: bytes) -> None:
        if topic != job_topic(self.name) or not payload:
            return  # not ours, or the server cleared a finished job's document
        try:
            document = parse_job_document(payload)
        except InvalidInputError as e:
            self.stats.refused_documents += 1
            logger.warning("%s: job document refused: %s", self.name, e)
            return
        try:
            self._documents.put_nowait(document)
        except queue.Full:
            logger.warning("%s: too many job documents waiting; dropped job %d", self.name, document.job_id)

    def _connect(self) -> Device:
        device = Device.from_dir(
            self.identity_dir, self.name, host=self.host, port=self.port, on_command=self._on_command
        )
        device.connect(self.timeout)
        self._device = device
        self.connected.set()
        return device

    def _disconnect(self) -> None:
        device, self._device = self._device, None
        self.connected.clear()
        if device is not None:
            with contextlib.suppress(Exception):
                device.close()

    def _report(self, document: JobDocument, state: str, substate: str | None = None, reason: str = "") -> bool:
        """Publish one state of the job (QoS 1); True once the broker acknowledged it."""
        self.stats.reports.append((document.job_id, document.attempt, state, substate))
        device = self._device
        if device is None:
            return False
        report = StatusReport(document.job_id, document.attempt, state, substate, self._running_version(), reason[:256])
        info = device.publish(status_topic(self.name), report.to_payload(), qos=1)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(self.timeout)
        return info.is_published()

    def _running_version(self) -> str | None:
        try:
            return self.updater.running_version
        except UpdateError:
            return None

    def _publish_state(self) -> None:
        version = self._running_version()
        if self._device is not None and version is not None:
            self._device.publish_state(DeviceState(model=self.updater.model, firmware_version=version), qos=1)

    # -- start-up: the trial boot, then connect --------------------------------------------------------------

    def _boot(self, journal: _Journal) -> tuple[BootOutcome, JobDocument | None]:
        document = parse_job_document(json.dumps(journal.job).encode()) if journal.job else None

        def health(slot: Path, version: str) -> bool:
            # Healthy: this identity reaches the broker and a report is acknowledged, and the image runs.
            try:
                self._connect()
            except DeviceConnectError as e:
                logger.warning("%s: firmware %s cannot reach the broker: %s", self.name, version, e)
                return False
            acknowledged = self._report(document, "in_progress", "rebooting") if document else True
            return acknowledged and self.image_check(slot)

        return self.updater.boot(health), document

    def _connect_until_up(self) -> bool:
        delay = RECONNECT_DELAY[0]
        while not self._stop.is_set():
            try:
                self._connect()
                return True
            except DeviceConnectError as e:
                logger.info("%s: not connected (%s); trying again in %.1f s", self.name, e, delay)
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, RECONNECT_DELAY[1])
        return False

    def _start(self) -> JobDocument | None:
        """What the agent does at every start; returns a job to carry on with, if one was cut off."""
        journal = self._load()
        outcome, document = self._boot(journal)
        if self._device is None and not self._connect_until_up():
            return None
        self._publish_state()
        if journal.phase == "rebooting" and document is not None:
            if outcome.status == "confirmed" or self._running_version() == document.version:
                # Confirmed now, or before a crash that came ahead of the report.
                self._report(document, "succeeded")
            elif outcome.status == "rolled_back":
                self._report(document, "failed", reason=outcome.reason)
            else:
                self._report(document, "failed", reason="the installed image was not found at boot")
            journal.finish(document.job_id, document.attempt)
            self._save(journal)
            return None
        if journal.phase == "running" and document is not None:
            return document  # cut off while downloading or installing: carry on (the download resumes)
        return None

    # -- running a job ----------------------------------------------------------------------------------------

    def _finish(self, document: JobDocument, state: str, reason: str = "") -> None:
        self._report(document, state, reason=reason)
        journal = self._load()
        journal.finish(document.job_id, document.attempt)
        self._save(journal)

    def _run_job(self, document: JobDocument) -> bool:
        """Run one update job; True when the agent must restart to boot the new image."""
        if document.model != self.updater.model:
            self._finish(document, "rejected", f"the job is for model {document.model}, this is {self.updater.model}")
            return False
        journal = self._load()
        journal.job, journal.phase = json.loads(document.to_payload()), "running"
        self._save(journal)
        self._report(document, "in_progress", "downloading")

        def on_phase(phase: str) -> None:
            if phase != "downloading":  # said already, before the metadata refresh
                self._report(document, "in_progress", phase)

        self.updater.on_phase = on_phase
        try:
            outcome = self.updater.update(document.version)
            self.stats.last_update = outcome
        except UpdateRefusedError as e:
            self._finish(document, "rejected", str(e))
            return False
        except UpdateError as e:
            self._finish(document, "failed", str(e))
            return False
        finally:
            self.updater.on_phase = None
        if outcome.status == "installed":
            journal = self._load()
            journal.phase = "rebooting"
            self._save(journal)
            self._report(document, "in_progress", "rebooting")
            return True
        if outcome.status == "up_to_date":
            self._finish(document, "succeeded")
        elif outcome.status == "failed_before":
            self._finish(document, "failed", f"{outcome.version} failed its trial boot here before")
        else:  # awaiting_reboot: an image is installed and not yet booted
            return True
        return False

    def _handle(self, document: JobDocument) -> bool:
        journal = self._load()
        current = journal.job
        if journal.finished(document.job_id, document.attempt):
            return False
        if current is not None and (current["job_id"], current["attempt"]) == (document.job_id, document.attempt):
            return False  # the same job again (a re-delivered retained document): already on it
        if document.operation == "cancel":
            journal.finish(document.job_id, document.attempt)
            self._save(journal)
            logger.info("%s: job %d canceled before it started", self.name, document.job_id)
            return False
        return self._run_job(document)

    def _loop(self) -> None:
        resume = self._start()
        while not self._stop.is_set():
            restart = False
            if resume is not None:
                document, resume = resume, None
                logger.info("%s: carrying on with job %d after a restart", self.name, document.job_id)
                restart = self._run_job(document)
            else:
                try:
                    document = self._documents.get(timeout=0.2)
                except queue.Empty:
                    continue
                restart = self._handle(document)
            if restart:
                self._disconnect()
                if not self.restart_after_install:
                    logger.info("%s: stopping at the reboot, as asked", self.name)
                    return
                # The "reboot": the agent starts again from its journal, as a new process would.
                self.stats.restarts += 1
                self._drain()
                resume = self._start()

    def _drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._documents.get_nowait()

    def run(self) -> None:
        """Run in this thread until `stop()`."""
        try:
            self._loop()
        finally:
            self._disconnect()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"ota-agent-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the agent to stop, without waiting (to stop many at once)."""
        self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
