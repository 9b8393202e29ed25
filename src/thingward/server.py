"""`thingward serve`: the embedded broker, the HTTPS API and the ingest writer in one asyncio process.

The registry is the source of truth. The audit log doubles as the change feed: a watcher notices a new
audit event (from this process or from a CLI command in another one), recompiles the policies, reloads
the CRL, and drops live sessions that are no longer allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from thingward.app.api import create_app
from thingward.app.camera_api import create_device_app
from thingward.app.https import https_server
from thingward.app.metrics import Metrics
from thingward.audit.service import run_audit
from thingward.broker.base import Broker, BrokerLimits, BrokerTls, InboundMessage
from thingward.broker.decisions import HookDecisions, load_certified_things
from thingward.broker.embedded import EmbeddedBroker
from thingward.broker.mosquitto import ManagedMosquitto
from thingward.camera.listener import DeviceListener
from thingward.camera.service import CameraService
from thingward.ingest.writer import MessageWriter
from thingward.live import LIVE_STATE_FILE, WRITE_INTERVAL, live_state, write_live_state
from thingward.ota.repository import OtaRepository
from thingward.ota.rollout_scheduler import RolloutScheduler
from thingward.platform import Platform
from thingward.policy.engine import PolicyEngine
from thingward.policy.world import PolicyWorld
from thingward.registry.audit_log import latest_event_id
from thingward.registry.models import Certificate, Thing
from thingward.registry.policies import load_policy_world

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25
OTA_REFRESH_INTERVAL = 60.0
CRL_REFRESH = dt.timedelta(hours=12)
STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Endpoints:
    mqtt: str
    api: str
    ca_certificate: str
    device_api: str = ""  # the device listener: HTTPS with a device certificate required (camera uploads)

    def to_dict(self) -> dict[str, str]:
        return {
            "mqtt": self.mqtt,
            "api": self.api,
            "ca_certificate": self.ca_certificate,
            "device_api": self.device_api,
        }


class _ServerCollector(Collector):
    """Reads live counters of the broker and writer at scrape time, so the hot path only bumps integers."""

    def __init__(self, server: ThingwardServer) -> None:
        self._server = server

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        denials = CounterMetricFamily(
            "thingward_mqtt_denials", "MQTT operations refused by policy or limits", labels=["action"]
        )
        per_action: dict[str, int] = {}
        for (_thing, action), count in self._server.broker.denials.items():
            per_action[action] = per_action.get(action, 0) + count
        for action, count in sorted(per_action.items()):
            denials.add_metric([action], count)
        yield denials
        yield GaugeMetricFamily(
            "thingward_mqtt_connected",
            "Devices connected now",
            value=len(self._server.broker.connected_things()),
        )
        yield CounterMetricFamily(
            "thingward_mqtt_refused_over_capacity",
            "MQTT connections closed because max_connections were open",
            value=self._server.broker.refused_over_capacity,
        )
        hooks = CounterMetricFamily(
            "thingward_hook_decisions", "Broker hook decisions (EMQX, VerneMQ, RabbitMQ)", labels=["result"]
        )
        hooks.add_metric(["allow"], self._server.hook_decisions.allowed)
        hooks.add_metric(["deny"], self._server.hook_decisions.denied)
        yield hooks
        yield CounterMetricFamily(
            "thingward_messages_stored",
            "Telemetry and event messages stored",
            value=self._server.writer.stored,
        )


def _revoked_certificates(platform: Platform) -> dict[str, str]:
    with platform.db.read() as session:
        rows = session.execute(
            select(Certificate.serial, Thing.name).join(Thing).where(Certificate.status == "revoked")
        ).all()
    return {serial: name for serial, name in rows}


class ThingwardServer:
    def __init__(
        self,
        platform: Platform,
        host: str,
        mqtt_port: int,
        http_port: int,
        broker: str | None = None,
        device_port: int | None = None,
    ) -> None:
        """`device_port` None: the config's `[server] device_port`, or a free port when `http_port` is 0."""
        self.platform = platform
        self.host = host
        settings = platform.settings
        self.metrics = Metrics()
        with platform.db.read() as session:
            self.engine = PolicyEngine(load_policy_world(session))
            self._seen_event = latest_event_id(session)
            certified = load_certified_things(session)
        hooks = settings.hooks
        self.hook_decisions = HookDecisions(
            self.engine,
            certified,
            cache_size=hooks.cache_size,
            ttl=hooks.cache_ttl_seconds,
            max_staleness=hooks.max_staleness_seconds,
        )
        self._revoked = _revoked_certificates(platform)
        self.writer = MessageWriter(platform.db, settings.ingest.retention_per_thing)
        self.rollouts = RolloutScheduler(platform.db)
        self.camera = CameraService.for_platform(platform)
        tls = BrokerTls(
            cert_file=platform.server_certificate_path,
            key_file=platform.server_key_path,
            ca_file=platform.ca_certificate_path,
            crl_file=platform.crl_path,
        )
        limits = BrokerLimits(
            max_payload_bytes=settings.mqtt.max_payload_bytes,
            max_connects_per_minute=settings.mqtt.max_connects_per_minute,
            max_publish_per_second=settings.mqtt.max_publish_per_second,
            max_connections=settings.mqtt.max_connections,
        )
        self.broker: Broker
        if (broker or settings.mqtt.broker) == "mosquitto":
            self.broker = ManagedMosquitto(
                host=host,
                port=mqtt_port,
                tls=tls,
                limits=limits,
                authorizer=self.engine,
                world=lambda: self.engine.world,
                ca=lambda: platform.ca,
                work_dir=settings.data_dir / "mosquitto",
                on_message=self._on_message,
                plaintext_port=settings.mqtt.plaintext_port,
                executable=settings.mqtt.mosquitto_executable,
            )
        else:
            self.broker = EmbeddedBroker(
                host=host,
                port=mqtt_port,
                tls=tls,
                limits=limits,
                authorizer=self.engine,
                on_message=self._on_message,
                plaintext_port=settings.mqtt.plaintext_port,
            )
        self.metrics.registry.register(_ServerCollector(self))
        app = create_app(
            platform,
            self.metrics,
            after_enroll=self._sync_from_thread,
            hook_decisions=self.hook_decisions,
            camera=self.camera,
        )
        self._http = https_server(app, host, http_port, platform.server_certificate_path, platform.server_key_path)
        if device_port is None:
            device_port = 0 if http_port == 0 else settings.server.device_port
        self.device_listener = DeviceListener(create_device_app(self.camera, self.engine), host, device_port, tls)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply_lock = asyncio.Lock()
        self._crl_written_at = dt.datetime.now(dt.UTC)

    def _on_message(self, message: InboundMessage) -> None:
        """The broker's sink: messages are stored; OTA job reports go to the rollout scheduler and motion
        events to the camera service's queue."""
        self.writer(message)
        self.rollouts.on_message(message)
        self.camera.on_message(message)

    def _sync_from_thread(self) -> None:
        """Called by API handlers in the thread pool: apply registry changes on the loop and wait for it."""
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.apply_changes(), self._loop)
        try:
            future.result(timeout=10)
        except Exception:
            logger.exception("applying registry changes after an enrollment failed; the watcher will retry")

    @property
    def http_port(self) -> int:
        for server in self._http.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the HTTPS server is not listening")

    def endpoints(self) -> Endpoints:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return Endpoints(
            mqtt=f"mqtts://{host}:{self.broker.port}",
            api=f"https://{host}:{self.http_port}",
            ca_certificate=str(self.platform.ca_certificate_path),
            device_api=f"https://{host}:{self.device_listener.port}",
        )

    async def start(self) -> Endpoints:
        self._loop = asyncio.get_running_loop()
        # A CRL left from a long stop may be past its next update, and OpenSSL refuses every client then.
        await asyncio.to_thread(self.platform.write_crl)
        self._crl_written_at = dt.datetime.now(dt.UTC)
        self.writer.start()
        self.camera.start()
        await self.broker.start()
        self._tasks.append(asyncio.create_task(self._http.serve(), name="thingward-https"))
        self._tasks.append(asyncio.create_task(self.device_listener.serve(), name="thingward-device-https"))
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not (self._http.started and self.device_listener.started):
                for task in self._tasks:
                    if task.done():
                        task.result()
                        raise RuntimeError(f"{task.get_name()} stopped during start-up")
                await asyncio.sleep(0.02)
        self._tasks.append(asyncio.create_task(self._watch(), name="thingward-watch"))
        if self.platform.settings.audit.interval_minutes > 0:
            self._tasks.append(asyncio.create_task(self._audit_on_schedule(), name="thingward-audit"))
        self._tasks.append(asyncio.create_task(self._refresh_ota(), name="thingward-ota-refresh"))
        self._tasks.append(asyncio.create_task(self.rollouts.run(self.broker.publish), name="thingward-rollouts"))
        if self.platform.settings.mqtt.plaintext_port is not None:
            logger.warning("a plaintext MQTT listener is configured: it accepts no device (no identity)")
        return self.endpoints()

    async def stop(self) -> None:
        await self.camera.stop()  # ends the live notification streams, which would hold the HTTPS server open
        self._http.should_exit = True
        self.device_listener.stop()
        for task in reversed(self._tasks):
            if task.get_name() in {"thingward-watch", "thingward-audit", "thingward-ota-refresh", "thingward-rollouts"}:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        self._tasks.clear()
        await self.broker.stop()
        await self.writer.stop()

    async def _watch(self) -> None:
        live_written = 0.0
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                await self.apply_changes()
            except Exception:
                logger.exception("applying registry changes failed; will retry")
            now = asyncio.get_running_loop().time()
            if now - live_written >= WRITE_INTERVAL:
                live_written = now
                try:
                    await self.write_live_state()
                except OSError:
                    logger.exception("writing the live session state failed; will retry")

    async def _refresh_ota(self) -> None:
        """Keep the OTA timestamp (and snapshot, targets) signed before they expire, with the online keys."""
        repository = OtaRepository.for_data_dir(self.platform.settings.data_dir)
        while True:
            if repository.exists:
                try:
                    roles = await asyncio.to_thread(repository.refresh)
                    if roles:
                        logger.info("re-signed OTA metadata: %s", ", ".join(roles))
                    if await asyncio.to_thread(repository.root_expires_soon):
                        logger.warning(
                            "the OTA root.json expires within 30 days: sign a new one offline (ota root rotate)"
                        )
                except Exception:
                    logger.exception("re-signing OTA metadata failed; will retry")
            await asyncio.sleep(OTA_REFRESH_INTERVAL)

    def _live_dicts(self) -> tuple[list[dict[str, str]], dict[str, list[dict[str, str]]]]:
        """The broker's live sessions and recent takeovers; call on the loop, where the broker changes them."""
        sessions = [s.to_dict() for s in self.broker.live_sessions()]
        takeovers = {thing: [t.to_dict() for t in events] for thing, events in self.broker.takeovers().items()}
        return sessions, takeovers

    async def write_live_state(self) -> None:
        """Share the live sessions and recent takeovers with other processes (the audit)."""
        sessions, takeovers = self._live_dicts()
        path = self.platform.settings.data_dir / LIVE_STATE_FILE
        await asyncio.to_thread(write_live_state, path, sessions, takeovers)

    async def _audit_on_schedule(self) -> None:
        """Audit the fleet and store the run now, then every `[audit] interval_minutes`."""
        settings = self.platform.settings.audit
        while True:
            try:
                sessions, takeovers = self._live_dicts()
                outcome = await asyncio.to_thread(
                    run_audit,
                    self.platform,
                    expiry_days=settings.expiry_days,
                    stale_days=settings.stale_days,
                    live_things=frozenset(self.broker.connected_things()),
                    live=live_state(dt.datetime.now(dt.UTC), sessions, takeovers),
                    save=True,
                    triggered_by="server:schedule",
                )
                counts = outcome.report["summary"]["findings"]
                new = len(outcome.changes["new"]) if outcome.changes else sum(counts.values())
                logger.info("audit run stored: %s; %d new since the last run", counts, new)
            except Exception:
                logger.exception("the scheduled audit failed; will try again at the next interval")
            await asyncio.sleep(settings.interval_minutes * 60)

    async def apply_changes(self, force: bool = False) -> None:
        """Bring the data plane in line with the registry when it changed since the last look."""
        async with self._apply_lock:
            await self._apply_changes(force)

    async def _apply_changes(self, force: bool) -> None:
        now = dt.datetime.now(dt.UTC)
        if now - self._crl_written_at > CRL_REFRESH:
            await asyncio.to_thread(self.platform.write_crl)
            self.broker.reload_crl()
            self.device_listener.reload_crl()
            self._crl_written_at = now
        with self.platform.db.read() as session:
            newest = latest_event_id(session)
        if newest == self._seen_event and not force:
            self.hook_decisions.confirm()
            return
        world = await asyncio.to_thread(self._load_world)
        certified = await asyncio.to_thread(self._load_certified)
        # Swapped together, with no await between: a hook never sees the new world with the old identities.
        self.engine.replace_world(world)
        self.hook_decisions.refresh(certified)
        # Seen only once the world, the hooks' view and the broker's compiled ACL are up to date: a failed
        # load is retried at the next look.
        await self.broker.policies_changed()
        self._seen_event = newest
        self.metrics.policy_reloads.inc()
        revoked = await asyncio.to_thread(_revoked_certificates, self.platform)
        newly_revoked_things = {name for serial, name in revoked.items() if serial not in self._revoked}
        if newly_revoked_things:
            # Written here from the registry, not only by the revoking process: that process commits first
            # and writes the file after, so reloading its file now could miss the new serial.
            await asyncio.to_thread(self.platform.write_crl)
            self.broker.reload_crl()
            self.device_listener.reload_crl()
        self._revoked = revoked
        # Every newly revoked thing, connected or not: a connection may sit between handshake and CONNECT.
        for thing in sorted(newly_revoked_things - self.broker.connected_things()):
            await self.broker.disconnect(thing)
        silenced = self.broker.drop_retained(
            lambda owner, topic: owner not in newly_revoked_things and self.engine.authorize(owner, "publish", topic)
        )
        if silenced:
            logger.info("dropped %d retained message(s) whose owner may no longer publish them", len(silenced))
        for thing in sorted(self.broker.connected_things()):
            if thing in newly_revoked_things or not self.engine.authorize(thing, "connect", thing):
                dropped = await self.broker.disconnect(thing)
                self.metrics.sessions_dropped.inc(dropped)
                logger.info("dropped %d live session(s) of %s: no longer allowed to connect", dropped, thing)

    def _load_certified(self) -> dict[str, dt.datetime]:
        with self.platform.db.read() as session:
            return load_certified_things(session)

    def _load_world(self) -> PolicyWorld:
        with self.platform.db.read() as session:
            return load_policy_world(session)
