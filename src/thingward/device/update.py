"""The device's OTA client: TUF-verified download, A/B install, boot once, confirm or roll back by itself.

    UpdateError                    (a ThingwardError)
     ├── UpdateRefusedError         verification failed: signature, threshold, expiry, metadata rollback,
     │                              hash, length, model, or an image older than the one running
     └── UpdateUnavailableError     the server cannot be reached or the download broke off (it resumes)

Trust comes from the root.json the device was provisioned with (`provision`); python-tuf's ngclient walks
root rotations, checks thresholds, expiry and version rollback of every role, over HTTPS verified against
the platform CA. The image is fetched by us (so an interrupted download resumes with a Range request), at
most its signed length, and checked against its signed hashes before it touches a slot.

The A/B layout on disk (`DEVICE_DIR/slots/`): `slot-a.img`, `slot-b.img` and `state.json`. A new image
goes to the inactive slot and is marked to boot once; the next boot (`boot`) first records that the trial
started, then runs the health check: success confirms the slot, failure, or a trial that already started
and never confirmed (the agent died), returns to the old slot. A slot is written to a temp file and renamed,
and the state is changed only after, so a crash while writing leaves the old slot booting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import ssl
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from thingward.device.client import Device
from thingward.device.delta import DeltaUnusableError, NoDeltaError, rebuild_from_delta
from thingward.device.enroll import server_context
from thingward.device.state import DeviceState
from thingward.errors import ThingwardError
from thingward.pki.files import write_atomic

logger = logging.getLogger(__name__)

Slot = Literal["a", "b"]
METADATA_DIR = "tuf"
SLOTS_DIR = "slots"
DOWNLOAD_DIR = "download"
STATE_FILE = "state.json"
_CHUNK = 64 * 1024


class UpdateError(ThingwardError):
    """An update did not happen; the device runs what it ran before."""


class UpdateRefusedError(UpdateError):
    """The update failed a security check. Retrying the same content will not help."""


class UpdateUnavailableError(UpdateError):
    """The server or the network failed; try again later (a partial download is kept and resumed)."""


@dataclass(frozen=True)
class UpdateConfig:
    """Bounds for everything the device fetches."""

    max_image_bytes: int = 256 * 1024 * 1024
    timeout_seconds: float = 30.0


class HttpFetcher(FetcherInterface):
    """ngclient's network edge: httpx over TLS 1.2+ trusting only the platform CA.

    With no CA given (the conformance client), the system trust store, or plain http where the URL says so:
    TUF verifies every byte either way; TLS only hides what is fetched.
    """

    def __init__(self, ca_certificate: Path | None, timeout: float = 30.0) -> None:
        verify: ssl.SSLContext | bool = server_context(ca_certificate) if ca_certificate else True
        self.client = httpx.Client(verify=verify, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _fetch(self, url: str) -> Iterator[bytes]:
        response = self.client.send(self.client.build_request("GET", url), stream=True)
        if response.status_code != 200:
            response.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status_code}", response.status_code)
        return self._chunks(response)

    @staticmethod
    def _chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as e:
            raise tuf_errors.DownloadError(f"download broke off: {e}") from e
        finally:
            response.close()


@dataclass
class SlotState:
    active: Slot = "a"
    versions: dict[str, str | None] = field(default_factory=lambda: {"a": None, "b": None})
    trial: Slot | None = None  # the slot marked to boot once
    trial_started: bool = False  # its one boot began (and has not confirmed yet)
    last_result: str = ""
    failed_versions: list[str] = field(default_factory=list)  # rolled back once: not tried again

    @property
    def inactive(self) -> Slot:
        return "b" if self.active == "a" else "a"

    @property
    def running_version(self) -> str | None:
        return self.versions[self.active]


class ABSlots:
    """Two image slots and a small state file, every change written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def slot_file(self, slot: Slot) -> Path:
        return self.path / f"slot-{slot}.img"

    def load(self) -> SlotState:
        raw = json.loads((self.path / STATE_FILE).read_text())
        return SlotState(**raw)

    def save(self, state: SlotState) -> None:
        write_atomic(self.path / STATE_FILE, json.dumps(asdict(state), indent=2).encode())

    def create(self, image: bytes, version: str) -> SlotState:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.slot_file("a"), image)
        state = SlotState(versions={"a": version, "b": None}, last_result="provisioned")
        self.save(state)
        return state

    def write_inactive(self, source: Path) -> Slot:
        """Copy `source` into the inactive slot (temp file, fsync, rename); the state does not change yet."""
        slot = self.load().inactive
        target = self.slot_file(slot)
        tmp = target.with_name(f".{target.name}.tmp")
        with source.open("rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        return slot


@dataclass(frozen=True)
class UpdateOutcome:
    status: Literal["up_to_date", "installed", "awaiting_reboot", "failed_before"]
    version: str
    target: str = ""
    downloaded_bytes: int = 0
    delta: str = ""  # the signed delta the image was rebuilt from, if it was
    delta_fallback: str = ""  # why the full image was downloaded instead of a delta

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BootOutcome:
    status: Literal["running", "confirmed", "rolled_back"]
    version: str
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


HealthCheck = Callable[[Path, str], bool]


def broker_health_check(
    identity_dir: Path, name: str, model: str, host: str, port: int, timeout: float = 10.0
) -> HealthCheck:
    """The health check of a real boot: connect to the broker as this device and report the new version.

    A device that cannot reach the broker with its identity, or whose report is not acknowledged, is not
    healthy: it goes back to the image that could.
    """

    def check(_slot: Path, version: str) -> bool:
        device = Device.from_dir(identity_dir, name, host=host, port=port)
        try:
            device.connect(timeout)
            report = device.publish_state(DeviceState(model=model, firmware_version=version), qos=1)
            report.wait_for_publish(timeout)
            return report.is_published()
        finally:
            device.close()

    return check


def _version(value: object, what: str) -> Version:
    if not isinstance(value, str):
        raise UpdateRefusedError(f"the signed target carries no {what}")
    try:
        return Version(value)
    except InvalidVersion:
        raise UpdateRefusedError(f"the signed target's {what} {value!r} is not a version") from None


class FirmwareUpdater:
    """The OTA client of one device, rooted at `device_dir`."""

    def __init__(
        self, device_dir: Path, api_url: str, ca_certificate: Path, model: str, config: UpdateConfig | None = None
    ) -> None:
        self.device_dir = device_dir
        self.model = model
        self.config = config or UpdateConfig()
        self.metadata_url = f"{api_url.rstrip('/')}/ota/metadata/"
        self.targets_url = f"{api_url.rstrip('/')}/ota/targets/"
        self.ca_certificate = ca_certificate
        self.slots = ABSlots(device_dir / SLOTS_DIR)
        # Told each step of an update ("downloading", "verifying", "installing"): the job agent reports them.
        self.on_phase: Callable[[str], None] | None = None

    def _phase(self, name: str) -> None:
        if self.on_phase is not None:
            self.on_phase(name)

    @classmethod
    def provision(
        cls,
        device_dir: Path,
        trusted_root: bytes,
        image: bytes,
        version: str,
        api_url: str,
        ca_certificate: Path,
        model: str,
    ) -> FirmwareUpdater:
        """Factory set-up: the trust anchor (root.json), and the first image in slot A."""
        Version(version)
        Metadata.from_bytes(trusted_root)  # refuse garbage as a trust anchor
        write_atomic(device_dir / METADATA_DIR / "root.json", trusted_root)
        updater = cls(device_dir, api_url, ca_certificate, model)
        updater.slots.create(image, version)
        return updater

    @property
    def running_version(self) -> str:
        version = self.slots.load().running_version
        if version is None:
            raise UpdateError(f"{self.slots.path} has no running image: provision the device first")
        return version

    @contextlib.contextmanager
    def _tuf(self) -> Iterator[tuple[Updater, HttpFetcher]]:
        fetcher = HttpFetcher(self.ca_certificate, self.config.timeout_seconds)
        try:
            updater = Updater(
                metadata_dir=str(self.device_dir / METADATA_DIR),
                metadata_base_url=self.metadata_url,
                target_base_url=self.targets_url,
                fetcher=fetcher,
                config=UpdaterConfig(app_user_agent="thingward-device"),
                # The cached root.json is the trust anchor: set at provisioning, advanced only by
                # verified root rotations.
                bootstrap=None,
            )
            yield updater, fetcher
        except tuf_errors.DownloadError as e:
            raise UpdateUnavailableError(f"the update server cannot be reached: {e}") from e
        except tuf_errors.RepositoryError as e:
            raise UpdateRefusedError(f"update metadata refused ({type(e).__name__}): {e}") from e
        finally:
            fetcher.close()

    def _newest_target(self, updater: Updater) -> str | None:
        # refresh() verified and persisted targets.json; the paths come from it, the info from get_targetinfo.
        targets = Metadata[Targets].from_file(str(self.device_dir / METADATA_DIR / "targets.json")).signed
        best: tuple[Version, str] | None = None
        for path, info in targets.targets.items():
            custom = info.custom if isinstance(info.custom, dict) else {}
            if custom.get("model") != self.model:
                continue
            try:
                version = Version(str(custom.get("version")))
            except InvalidVersion:
                continue
            if best is None or version > best[0]:
                best = (version, path)
        return best[1] if best else None

    def update(self, version: str | None = None) -> UpdateOutcome:
        """Fetch the newest signed image for this model (or `version`) into the inactive slot, marked to boot once.

        Nothing newer: `up_to_date`. Older than what runs, for another model, or failing any check: refused.
        """
        running = Version(self.running_version)
        waiting = self.slots.load()
        if waiting.trial is not None:
            # One new image at a time: the installed one boots (and confirms or rolls back) first.
            return UpdateOutcome("awaiting_reboot", str(waiting.versions[waiting.trial]))
        with self._tuf() as (updater, fetcher):
            updater.refresh()
            if version is not None:
                path: str | None = f"{self.model}/{_version(version, 'requested version')}.img"
            else:
                path = self._newest_target(updater)
            if path is None:
                return UpdateOutcome("up_to_date", str(running))
            info = updater.get_targetinfo(path)
            if info is None:
                raise UpdateRefusedError(f"no signed target {path} for this device")
            offered = self._judge(info, running)
            if offered is None:
                return UpdateOutcome("up_to_date", str(running))
            if str(offered) in waiting.failed_versions:
                # It failed its trial boot here; a loop of install and roll back helps nobody.
                return UpdateOutcome("failed_before", str(offered), info.path)
            self._phase("downloading")
            image, fetched, delta, fallback = self._fetch(updater, fetcher, info, running)
        self._phase("installing")
        slot = self.slots.write_inactive(image)
        state = self.slots.load()
        state.versions[slot] = str(offered)
        state.trial, state.trial_started, state.last_result = slot, False, f"installed {offered}, boot once"
        self.slots.save(state)
        image.unlink()
        logger.info("firmware %s written to slot %s; boots once on the next start", offered, slot)
        return UpdateOutcome("installed", str(offered), info.path, fetched, delta, fallback)

    def _judge(self, info: TargetFile, running: Version) -> Version | None:
        custom = info.custom if isinstance(info.custom, dict) else {}
        if custom.get("model") != self.model:
            raise UpdateRefusedError(
                f"target {info.path} is signed for model {custom.get('model')!r}, not {self.model}"
            )
        offered = _version(custom.get("version"), "version")
        if offered < running:
            raise UpdateRefusedError(f"target {info.path} is version {offered}, older than the running {running}")
        if offered == running:
            return None
        if "min_version" in custom and running < _version(custom["min_version"], "minimum version"):
            raise UpdateRefusedError(
                f"{offered} needs at least {custom['min_version']} to update from; this runs {running}"
            )
        if info.length > self.config.max_image_bytes:
            raise UpdateRefusedError(f"target {info.path} is {info.length} bytes, over {self.config.max_image_bytes}")
        return offered

    def _fetch(
        self, updater: Updater, fetcher: HttpFetcher, info: TargetFile, running: Version
    ) -> tuple[Path, int, str, str]:
        """The verified image for `info`: rebuilt from a signed delta when one leads from the running image,
        else downloaded whole. Returns the image, the bytes downloaded, the delta used and why none was."""
        state = self.slots.load()
        targets = Metadata[Targets].from_file(str(self.device_dir / METADATA_DIR / "targets.json")).signed
        try:
            rebuilt = rebuild_from_delta(
                updater,
                info,
                str(running),
                self.slots.slot_file(state.active),
                self.device_dir / DOWNLOAD_DIR,
                targets,
            )
        except DeltaUnusableError as e:
            if isinstance(e, NoDeltaError):
                logger.info("downloading the full image of %s: %s", info.path, e)
            else:
                logger.warning("delta for %s not used, downloading the full image: %s", info.path, e)
            image, fetched = self._download(fetcher, info)
            return image, fetched, "", str(e)
        # A partial full download left by an earlier try is not needed any more.
        (self.device_dir / DOWNLOAD_DIR / f"{info.hashes.get('sha256')}.part").unlink(missing_ok=True)
        return rebuilt.image, rebuilt.downloaded_bytes, rebuilt.delta, ""

    def _download(self, fetcher: HttpFetcher, info: TargetFile) -> tuple[Path, int]:
        """Fetch the image to a partial file, resuming one left by an earlier try; verify it whole."""
        sha256 = info.hashes.get("sha256")
        if not sha256:
            raise UpdateRefusedError(f"target {info.path} carries no sha256")
        directory, _, name = info.path.rpartition("/")
        url = f"{self.targets_url}{directory}/{sha256}.{name}"
        part = self.device_dir / DOWNLOAD_DIR / f"{sha256}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have >= info.length:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        fetched = 0
        try:
            with fetcher.client.stream("GET", url, headers=headers) as response:
                if response.status_code == 200:
                    have = 0  # the server sent it whole
                elif response.status_code != 206 or not have:
                    raise UpdateUnavailableError(f"{url}: HTTP {response.status_code}")
                with part.open("ab" if have else "wb") as f:
                    for chunk in response.iter_bytes(_CHUNK):
                        if have + fetched + len(chunk) > info.length:
                            # Endless data: stop at the signed length, keep nothing.
                            f.close()
                            part.unlink()
                            raise UpdateRefusedError(f"{info.path} is longer than its signed {info.length} bytes")
                        f.write(chunk)
                        fetched += len(chunk)
        except httpx.HTTPError as e:
            raise UpdateUnavailableError(f"download of {info.path} broke off after {fetched} bytes: {e}") from e
        self._phase("verifying")
        with part.open("rb") as f:
            try:
                info.verify_length_and_hashes(f)
            except tuf_errors.LengthOrHashMismatchError as e:
                part.unlink()
                raise UpdateRefusedError(f"{info.path} does not match its signed length and hash: {e}") from None
        return part, fetched

    def cycle(self, health_check: HealthCheck, version: str | None = None) -> tuple[BootOutcome, UpdateOutcome]:
        """One run of the agent: start (finishing any trial boot), look for an update, and when one was
        installed, "reboot": start again, which boots it once and confirms it or rolls back."""
        started = self.boot(health_check)
        outcome = self.update(version)
        if outcome.status == "installed":
            logger.info("restarting the agent to boot firmware %s once", outcome.version)
            started = self.boot(health_check)
        return started, outcome

    def boot(self, health_check: HealthCheck) -> BootOutcome:
        """What the agent does at start: run a slot marked to boot once, then confirm it or go back."""
        state = self.slots.load()
        if state.trial is None:
            return BootOutcome("running", str(state.running_version))
        trial = state.trial
        new_version = str(state.versions[trial])
        if state.trial_started:
            return self._roll_back(state, f"{new_version} did not confirm on its one trial boot")
        state.trial_started = True
        self.slots.save(state)  # before the new image runs: a crash from here on means roll back
        try:
            healthy = health_check(self.slots.slot_file(trial), new_version)
        except Exception as e:
            logger.warning("health check of firmware %s raised: %s", new_version, e)
            healthy = False
        if not healthy:
            return self._roll_back(state, f"{new_version} failed its health check")
        state.active, state.trial, state.trial_started = trial, None, False
        state.last_result = f"confirmed {new_version}"
        self.slots.save(state)
        logger.info("firmware %s confirmed in slot %s", new_version, trial)
        return BootOutcome("confirmed", new_version)

    def _roll_back(self, state: SlotState, reason: str) -> BootOutcome:
        if state.trial is not None:
            state.failed_versions.append(str(state.versions[state.trial]))
        state.trial, state.trial_started, state.last_result = None, False, f"rolled back: {reason}"
        self.slots.save(state)
        logger.warning("rolled back to firmware %s: %s", state.running_version, reason)
        return BootOutcome("rolled_back", str(state.running_version), reason)
