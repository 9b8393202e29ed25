"""Managed Mosquitto: thingward writes its configuration and ACLs, runs it, and reads and writes through it.

    ManagedMosquitto.start()
      -> mosquitto.conf (0600, in the work dir): one TLS listener, client certificate required, the CN
         is the username and the client id, the platform CA and CRL, TLS 1.2 floor, no anonymous access,
         persistence in the work dir, packet and connection limits
      -> acl_file compiled from the policies (mosquitto_acl.compile_acl)
      -> `mosquitto -c mosquitto.conf`, supervised: restarted with backoff when it dies
      -> the internal client (its own certificate, CN `thingward:internal`) subscribes to what ingestion
         stores and is the only door for `publish()`

What Mosquitto 2.0.11 does not do, and what this adapter does instead (docs/brokers.md has the details):
- SIGHUP re-reads the ACL and the CRL, and the new ACL applies to open sessions at once, but nobody is
  disconnected. `disconnect(thing)` cuts the thing out of the ACL, reloads, then takes its session over:
  a connection with a certificate of the same name, issued for a minute with a key that never leaves
  this process, makes Mosquitto close the old connection (and, being a clean session, forget the
  persistent one) without publishing its will; then the ACL is restored. The device's reconnection meets
  the reloaded CRL (revoked, disabled) or an empty ACL.
- A CONNECT cannot be refused by name: a thing the policy may not connect as itself has no ACL block, so
  its session can do nothing, and it is taken over as soon as Mosquitto logs it.
- SUBSCRIBE is never refused (SUBACK 0); what a subscription delivers is checked per message.
- Who is connected comes from Mosquitto's connection log lines (it has no API for it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from thingward.broker.base import (
    Authorizer,
    BrokerLimits,
    BrokerTls,
    InboundMessage,
    LiveSession,
    MessageSink,
    Takeover,
)
from thingward.broker.mosquitto_acl import INTERNAL_IDENTITY, INTERNAL_RULES, compile_acl
from thingward.errors import ConfigError
from thingward.pki.ca import CertificateAuthority, certificate_pem, issue_device_certificate, private_key_pem
from thingward.pki.files import write_secret
from thingward.policy.topics import matches
from thingward.policy.world import PolicyWorld

__all__ = ["ManagedMosquitto", "MosquittoProcess", "raw_mosquitto", "render_config"]

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds for mosquitto to say it is running
CLIENT_TIMEOUT = 10.0  # seconds for the internal client's CONNACK, SUBACK, PUBACK
RELOAD_TIMEOUT = 10.0  # seconds for a SIGHUP to be taken in
RELOAD_RETRY = 2.0  # seconds without Mosquitto's "Reloading config." before the SIGHUP is sent again
STOP_TIMEOUT = 5.0
KICK_VALIDITY = dt.timedelta(minutes=1)
INTERNAL_VALIDITY = dt.timedelta(days=30)
RESTART_BACKOFF = (0.5, 30.0)  # first and longest wait before restarting a crashed mosquitto
STABLE_AFTER = 60.0  # seconds of uptime after which the backoff starts again from the first wait
PACKET_OVERHEAD = 4096  # bytes of MQTT header and topic allowed on top of max_payload_bytes
# Per client, queued beyond the in-flight window: enough for ingestion to ride out a fleet-wide burst.
MAX_QUEUED_MESSAGES = 200_000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
LOG_TAIL = 40
TAKEOVERS_KEPT = 20

_CONNECTED = re.compile(r"New client connected from (?P<peer>\S+) as (?P<id>\S+) \(")
_CLOSED = re.compile(
    r"(?:Client (?P<a>\S+) (?:disconnected|closed its connection|has exceeded timeout)"
    r"|Socket error on client (?P<b>\S+?),"
    r"|Client (?P<c>\S+) already connected, closing old connection)"
)
_TAKEN_OVER = "already connected, closing old connection"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_as_user() -> str:
    """Mosquitto started as root drops to `user`: make it whoever runs thingward, who can read the keys."""
    return pwd.getpwuid(os.geteuid()).pw_name


def render_config(
    *,
    host: str,
    port: int,
    tls: BrokerTls,
    limits: BrokerLimits,
    work_dir: Path,
    acl_file: Path | None,
    plaintext_port: int | None = None,
) -> str:
    """mosquitto.conf for thingward: mutual TLS only, identity from the certificate, the CRL, limits.

    `acl_file=None` is raw Mosquitto (every authenticated client may do anything): only for benchmarks.
    """
    lines = [
        "# Written by thingward at every start; edits are lost. See docs/brokers.md.",
        "per_listener_settings false",
        f"user {_run_as_user()}",
        "allow_anonymous false",
        "persistence true",
        f"persistence_location {work_dir}/",
        "autosave_interval 60",
        "persistent_client_expiration 30d",
        f"max_packet_size {limits.max_payload_bytes + PACKET_OVERHEAD}",
        "max_inflight_messages 20",
        # The queue per client past its 20 in flight. Ingestion's internal client is one client that hears
        # every device: a burst (1,000 devices x 100 QoS 1 messages) outran a 1,000-message queue and Mosquitto
        # dropped the rest after the devices had their PUBACKs. Mosquitto 2.0.11 has no per-client limit, so
        # the count is high for everyone and memory is bounded by bytes instead (before, 1,000 messages of up
        # to max_packet_size each allowed far more per client than this).
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        "max_keepalive 600",
        "set_tcp_nodelay true",
        "log_dest stderr",  # unbuffered, unlike stdout into a pipe: each line as it happens
        "log_timestamp false",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    lines += [
        "",
        f"listener {port} {host}",
        f"max_connections {limits.max_connections}",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
        f"crlfile {tls.crl_file}",
        "require_certificate true",
        "use_identity_as_username true",
        # The client id becomes the certificate's name: no device can claim (and so take over) another's id.
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ]
    if plaintext_port is not None:
        # Refuses every CONNECT: no certificate, no identity, and anonymous access is off.
        lines += ["", f"listener {plaintext_port} {host}", f"max_connections {limits.max_connections}"]
    for path in (tls.ca_file, tls.cert_file, tls.key_file, tls.crl_file, work_dir, acl_file):
        if path is not None and any(c in str(path) for c in "\n\r"):
            raise ConfigError(f"{path!r}: a path with a line break cannot go into mosquitto.conf")
    return "\n".join(lines) + "\n"


def _issue_client_certificate(
    ca: CertificateAuthority, name: str, validity: dt.timedelta
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return key, issue_device_certificate(ca, csr, name, validity)


class MosquittoProcess:
    """One mosquitto process and the lines it logs. `running` is set when it says so."""

    def __init__(self, executable: str, config: Path, on_line: Callable[[str], None] | None = None) -> None:
        self._executable = executable
        self._config = config
        self._on_line = on_line
        self.process: asyncio.subprocess.Process | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.running = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("mosquitto is not started")
        return self.process.pid

    async def start(self) -> None:
        path = shutil.which(self._executable)
        if path is None:
            raise ConfigError(
                f"{self._executable!r} was not found: install Debian's mosquitto package (apt-get install mosquitto)"
            )
        self.running.clear()
        self.process = await asyncio.create_subprocess_exec(
            path,
            "-c",
            str(self._config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024,
        )
        self._reader = asyncio.create_task(self._read(self.process), name="mosquitto-log")
        waiter = asyncio.create_task(self.running.wait())
        exited = asyncio.create_task(self.process.wait())
        try:
            done, _ = await asyncio.wait({waiter, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, exited):
                task.cancel()
            await asyncio.gather(waiter, exited, return_exceptions=True)
        if not self.running.is_set():
            await self.stop()
            tail = " | ".join(self.tail)
            raise ConfigError(f"mosquitto did not start ({'it exited' if exited in done else 'timed out'}): {tail}")

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        if process.stderr is None:
            return
        while True:
            try:
                raw = await process.stderr.readline()
            except ValueError:  # a line over the limit: skip it rather than stop reading
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if " running" in line and line.startswith("mosquitto version"):
                self.running.set()
            if self._on_line is not None:
                try:
                    self._on_line(line)
                except Exception:
                    logger.exception("handling a mosquitto log line failed")

    async def wait(self) -> int:
        if self.process is None:
            return 0
        return await self.process.wait()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def stop(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, STOP_TIMEOUT)
            except TimeoutError:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
            self._reader = None


async def raw_mosquitto(
    work_dir: Path, tls: BrokerTls, *, host: str = "127.0.0.1", port: int = 0, limits: BrokerLimits | None = None
) -> tuple[MosquittoProcess, int]:
    """Stock Mosquitto with the same mutual TLS and no ACL at all: the benchmarks' reference. Stop it with
    `await process.stop()`. Returns the process and its port."""
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = port or _free_port(host)
    config = work_dir / "mosquitto-raw.conf"
    text = render_config(
        host=host, port=port, tls=tls, limits=limits or BrokerLimits(), work_dir=work_dir, acl_file=None
    )
    write_secret(config, text.replace("persistence true", "persistence false").encode())
    process = MosquittoProcess("mosquitto", config)
    await process.start()
    return process, port


class _InternalClient:
    """thingward's own MQTT client (paho in its thread); results come back to the event loop as futures."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        tls: BrokerTls,
        cert: Path,
        key: Path,
        on_message: Callable[[str, bytes, int, bool], None],
    ) -> None:
        self._loop = loop
        self._host = host
        self._port = port
        self._on_message_cb = on_message
        self._lock = threading.Lock()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._connected: asyncio.Future[bool] = loop.create_future()
        self.filters = tuple(topic for access, topic in INTERNAL_RULES if access == "read")
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=INTERNAL_IDENTITY,
            clean_session=False,  # messages published while thingward restarts wait in the session
            protocol=mqtt.MQTTv311,
        )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        # The server certificate names the public host names, not necessarily the loopback we dial.
        context.check_hostname = False
        client.tls_set_context(context)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._client = client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        ok = not reason.is_failure
        if ok:
            # Every (re)connect: subscribe again, in case the broker lost the session (no persistence file).
            client.subscribe([(topic, 1) for topic in self.filters])
        self._loop.call_soon_threadsafe(self._resolve_connected, ok)

    def _resolve_connected(self, ok: bool) -> None:
        if not self._connected.done():
            self._connected.set_result(ok)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._loop.call_soon_threadsafe(
            self._on_message_cb, message.topic, bytes(message.payload), message.qos, bool(message.retain)
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        codes = [int(r.value) for r in reasons]
        self._loop.call_soon_threadsafe(self._resolve_suback, mid, codes)

    def _resolve_suback(self, mid: int, codes: list[int]) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    async def connect(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        ok = await asyncio.wait_for(asyncio.shield(self._connected), CLIENT_TIMEOUT)
        if not ok:
            raise ConfigError("mosquitto refused thingward's internal client: is the ACL or CA wrong?")

    async def barrier(self) -> None:
        """Return once Mosquitto has handled everything before this call (a SUBACK round trip)."""
        future: asyncio.Future[list[int]] = self._loop.create_future()
        with self._lock:
            result, mid = self._client.subscribe("thingward/internal/barrier", 0)
            if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
                raise ConnectionError(f"the internal MQTT client is not connected (paho error {result})")
            self._subacks[mid] = future
        await asyncio.wait_for(future, CLIENT_TIMEOUT)

    async def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publishing to {topic!r} failed: the internal MQTT client is not connected")
        if qos > 0:
            await asyncio.to_thread(info.wait_for_publish, CLIENT_TIMEOUT)
            if not info.is_published():
                raise TimeoutError(f"mosquitto did not acknowledge the publish to {topic!r}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class _Session:
    peer: str
    since: dt.datetime


class ManagedMosquitto:
    """A Mosquitto process run by thingward, with the policies compiled into its ACLs. Implements `Broker`."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: BrokerTls,
        limits: BrokerLimits,
        authorizer: Authorizer,
        world: Callable[[], PolicyWorld],
        ca: Callable[[], CertificateAuthority],
        work_dir: Path,
        on_message: MessageSink | None = None,
        plaintext_port: int | None = None,
        executable: str = "mosquitto",
    ) -> None:
        if min(limits.max_payload_bytes, limits.max_connections) < 1:
            raise ConfigError(f"broker limits must all be positive: {limits}")
        self._host = host
        self._requested_port = port
        self._tls = tls
        self._limits = limits
        self._authorizer = authorizer
        self._world = world
        self._ca = ca
        self._work_dir = work_dir
        self._on_message = on_message
        self._plaintext_port = plaintext_port
        self._executable = executable
        self.denials: collections.Counter[tuple[str, str]] = collections.Counter()  # Mosquitto does not tell
        self.refused_over_capacity = 0
        self._port: int | None = None
        self._process: MosquittoProcess | None = None
        self._client: _InternalClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._sessions: dict[str, _Session] = {}
        self._pending_takeover: dict[str, str] = {}
        self._takeovers: dict[str, collections.deque[Takeover]] = {}
        self._reloads = 0
        self._reload_seen = asyncio.Event()
        self._kick_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._kicking: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.restarts = 0
        self.stricter: tuple[str, ...] = ()

    # -- files -------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self._work_dir / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        return self._work_dir / "mosquitto.acl"

    def _write_acl(self, cut_off: frozenset[str] = frozenset()) -> None:
        world = self._world()
        if cut_off:
            world = dataclasses.replace(world, things={k: v for k, v in world.things.items() if k not in cut_off})
        compiled = compile_acl(world, self._authorizer)
        write_secret(self.acl_path, compiled.text.encode())
        if compiled.stricter != self.stricter:
            for note in compiled.stricter:
                logger.warning("mosquitto ACL narrower than the policy: %s", note)
        self.stricter = compiled.stricter
        logger.info("mosquitto ACL written: %d identities, %d rules", compiled.identities, compiled.rules)

    def _write_internal_identity(self) -> tuple[Path, Path]:
        key, cert = _issue_client_certificate(self._ca(), INTERNAL_IDENTITY, INTERNAL_VALIDITY)
        key_path, cert_path = self._work_dir / "internal.key", self._work_dir / "internal.crt"
        write_secret(key_path, private_key_pem(key))
        write_secret(cert_path, certificate_pem(cert))
        return cert_path, key_path

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the broker is already started")
        self._stopping = False
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self._work_dir, 0o700)
        self._port = self._requested_port or _free_port(self._host)
        plaintext = self._plaintext_port
        if plaintext == 0:
            plaintext = _free_port(self._host)
        self._plaintext_port = plaintext
        self._write_acl()
        text = render_config(
            host=self._host,
            port=self._port,
            tls=self._tls,
            limits=self._limits,
            work_dir=self._work_dir,
            acl_file=self.acl_path,
            plaintext_port=plaintext,
        )
        write_secret(self.config_path, text.encode())
        self._process = MosquittoProcess(self._executable, self.config_path, self._on_log_line)
        try:
            await self._process.start()
            await self._connect_internal_client()
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="mosquitto-supervisor")
        if plaintext is not None:
            logger.warning(
                "plaintext MQTT listener open on %s:%d: it refuses every CONNECT (no certificate, no identity)",
                self._host,
                plaintext,
            )
        logger.info("managed mosquitto listening on %s:%d (MQTT over mutual TLS)", self._host, self._port)

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
        if self._process is not None:
            await self._process.stop()
            self._process = None
        self._sessions.clear()
        self._port = None

    async def _connect_internal_client(self) -> None:
        """A fresh certificate and client at every (re)start: the identity never outlives its certificate."""
        old, self._client = self._client, None
        if old is not None:
            await asyncio.to_thread(old.close)
        cert, key = await asyncio.to_thread(self._write_internal_identity)
        client = _InternalClient(asyncio.get_running_loop(), self._host, self.port, self._tls, cert, key, self._deliver)
        self._client = client
        await client.connect()
        await client.barrier()

    async def _supervise(self) -> None:
        """Restart mosquitto when it dies, waiting longer after each quick death (bounded)."""
        delay = RESTART_BACKOFF[0]
        loop = asyncio.get_running_loop()
        while not self._stopping:
            process = self._process
            if process is None:
                return
            started = loop.time()
            code = await process.wait()
            if self._stopping:
                return
            self._sessions.clear()
            logger.error("mosquitto exited with %s: %s; restarting in %.1f s", code, " | ".join(process.tail), delay)
            await process.stop()
            if loop.time() - started > STABLE_AFTER:
                delay = RESTART_BACKOFF[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])
            try:
                self._write_acl()
                await process.start()
                await self._connect_internal_client()
                self.restarts += 1
                logger.info("mosquitto restarted (%d restart(s) so far)", self.restarts)
            except Exception:
                logger.exception("restarting mosquitto failed; trying again")
                await process.stop()  # so the next wait returns at once and the backoff goes on

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker is not started")
        return self._port

    @property
    def plaintext_port(self) -> int | None:
        return self._plaintext_port

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the broker is not started")
        return self._process.pid

    # -- what Mosquitto logs -------------------------------------------------------------------------

    def _on_log_line(self, line: str) -> None:
        if line == "Reloading config.":
            self._reloads += 1
            self._reload_seen.set()
            return
        connected = _CONNECTED.search(line)
        if connected is not None:
            client_id, peer = connected["id"], connected["peer"]
            old = self._pending_takeover.pop(client_id, None)
            if old is not None and client_id != INTERNAL_IDENTITY:
                events = self._takeovers.setdefault(client_id, collections.deque(maxlen=TAKEOVERS_KEPT))
                events.append(Takeover(at=dt.datetime.now(dt.UTC), old_peer=old, new_peer=peer))
            self._sessions[client_id] = _Session(peer=peer, since=dt.datetime.now(dt.UTC))
            if client_id != INTERNAL_IDENTITY and client_id not in self._kicking and not self._may_connect(client_id):
                # Mosquitto cannot refuse a CONNECT by name: the session has no ACL, and is closed at once.
                self.denials[(client_id, "connect")] += 1
                logger.info("denied connect: thing=%s peer=%s reason=not allowed by policy: closing", client_id, peer)
                self._spawn(self._kick(client_id))
            return
        closed = _CLOSED.search(line)
        if closed is not None:
            client_id = closed["a"] or closed["b"] or closed["c"]
            session = self._sessions.pop(client_id, None)
            if _TAKEN_OVER in line and session is not None:
                self._pending_takeover[client_id] = session.peer
            if len(self._pending_takeover) > 10_000:
                self._pending_takeover.clear()

    def _may_connect(self, name: str) -> bool:
        try:
            return self._authorizer.authorize(name, "connect", name) is True
        except Exception:
            logger.exception("authorizer failed on connect of %r: denying", name)
            return False

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("mosquitto background task failed: %r", task.exception())

    def connected_things(self) -> set[str]:
        return {name for name in self._sessions if name != INTERNAL_IDENTITY}

    def live_sessions(self) -> list[LiveSession]:
        return sorted(
            (
                LiveSession(thing=name, serial="", peer=s.peer, since=s.since)
                for name, s in self._sessions.items()
                if name != INTERNAL_IDENTITY
            ),
            key=lambda s: (s.thing, s.since),
        )

    def takeovers(self) -> dict[str, list[Takeover]]:
        return {thing: list(events) for thing, events in self._takeovers.items() if events}

    # -- the core's controls -----------------------------------------------------------------------

    def set_authorizer(self, authorizer: Authorizer) -> None:
        """Compile from `authorizer` from now on (takes effect at the next `policies_changed`)."""
        self._authorizer = authorizer

    async def _reload(self) -> None:
        """SIGHUP (ACL and CRL re-read) and wait until Mosquitto has taken it in.

        One at a time, each finished before the next signal: Mosquitto keeps a single "reload" flag and
        clears it when a reload ends, so a SIGHUP arriving during a reload is lost (seen under load). A
        signal that still goes unanswered is sent again.
        """
        async with self._reload_lock:
            process, client = self._process, self._client
            if process is None or client is None:
                raise RuntimeError("the broker is not started")
            seen = self._reloads
            async with asyncio.timeout(RELOAD_TIMEOUT):
                while self._reloads == seen:
                    self._reload_seen.clear()
                    process.signal(signal.SIGHUP)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._reload_seen.wait(), RELOAD_RETRY)
            # The line is printed as the reload starts; it runs to completion in Mosquitto's loop before
            # the next packet is read, so a SUBACK round trip ends after it.
            await client.barrier()

    def reload_crl(self) -> None:
        """Mosquitto re-reads its crlfile on SIGHUP (in the background; `disconnect` reloads again and waits).
        Live sessions stay: see `disconnect`."""
        if self._process is None:
            raise RuntimeError("the broker is not started")
        self._spawn(self._reload())

    async def policies_changed(self) -> None:
        """Recompile the ACL from the current world and make Mosquitto apply it to every session."""
        await asyncio.to_thread(self._write_acl)
        await self._reload()

    async def disconnect(self, thing: str) -> int:
        """Take the thing's session over so Mosquitto closes it and forgets it, with its rights cut off meanwhile.

        The CRL is re-read first (a revoked device's reconnection is refused at the handshake), and while
        the session is taken over the thing has no ACL: Mosquitto publishes a taken-over session's will if
        the ACL lets it, and a device cut off must not speak through its will.
        """
        if self._process is None or self._client is None:
            raise RuntimeError("the broker is not started")
        was_connected = thing in self._sessions
        await asyncio.to_thread(self._write_acl, frozenset({thing}))
        try:
            await self._reload()
            await self._kick(thing)
        finally:
            await asyncio.to_thread(self._write_acl)
            await self._reload()
        logger.info("disconnected thing %r from mosquitto (session taken over and closed)", thing)
        return 1 if was_connected else 0

    async def _kick(self, thing: str) -> None:
        async with self._kick_lock:
            self._kicking.add(thing)
            try:
                await asyncio.to_thread(self._take_over, thing)
            finally:
                self._kicking.discard(thing)

    def _take_over(self, thing: str) -> None:
        key, cert = _issue_client_certificate(self._ca(), thing, KICK_VALIDITY)
        # ssl can load a key only from a file: it lives there for the few milliseconds of loading.
        key_path, cert_path = self._work_dir / "takeover.key", self._work_dir / "takeover.crt"
        write_secret(key_path, private_key_pem(key))
        write_secret(cert_path, certificate_pem(cert))
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self._tls.ca_file))
            context.check_hostname = False
            context.load_cert_chain(cert_path, key_path)
        finally:
            key_path.unlink(missing_ok=True)
            cert_path.unlink(missing_ok=True)
        done = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, clean_session=True, protocol=mqtt.MQTTv311)
        client.tls_set_context(context)
        client.on_connect = lambda *args: done.set()
        try:
            client.connect(self._host, self.port, keepalive=10)
            client.loop_start()
            if not done.wait(CLIENT_TIMEOUT):
                logger.warning("taking over %r: no CONNACK within %.0f s", thing, CLIENT_TIMEOUT)
        except OSError as e:
            logger.warning("taking over %r failed: %s", thing, e)
        finally:
            client.disconnect()
            client.loop_stop()

    def drop_retained(self, keep: Callable[[str, str], bool]) -> list[str]:
        """Not possible here: thingward's client may neither list nor clear Mosquitto's retained messages
        (least privilege). A retained message is still only delivered to those the ACL lets read it."""
        return []

    # -- ingestion and publishing ------------------------------------------------------------------

    def _deliver(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        sink = self._on_message
        levels = topic.split("/")
        if sink is None or len(levels) < 3:
            return
        thing = levels[1]
        # MQTT 3.1.1 does not say who published: the topic names the thing, and only a thing the policy
        # lets publish there is believed (a policy letting others write under its prefix is a lint finding).
        try:
            if not self._authorizer.authorize(thing, "publish", topic):
                return
            sink(InboundMessage(thing=thing, topic=topic, payload=payload, qos=qos, retain=retain))
        except Exception:
            logger.exception("on_message sink failed for a message on %r", topic)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as thingward through the internal client (only where its ACL lets it write)."""
        if not any(access == "write" and matches(f.split("/"), topic.split("/")) for access, f in INTERNAL_RULES):
            raise ValueError(f"thingward publishes only to commands and updates, not to {topic!r}")
        if self._client is None:
            raise RuntimeError("the broker is not started")
        await self._client.publish(topic, payload, qos, retain)
