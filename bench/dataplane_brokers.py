"""Issue 7's production data-plane benchmarks, each side by side in one run, as ratios.

    throughput  QoS 0 and 1, 100-byte payloads, N publisher/subscriber pairs over mutual TLS: stock
                Mosquitto with no ACL (the reference), thingward-managed Mosquitto (real enrolled things,
                the ACL compiled by thingward) and the embedded broker
    storm       D mTLS devices connect at once: time until all have their CONNACK, and the broker's
                memory (VmRSS and VmHWM from /proc), raw against managed Mosquitto
    issuance    certificates from real CSRs per second: the CA alone, the enrollment service function
                (token, CSR checks, registry, audit log) and the HTTPS enroll endpoint, beside
                `openssl speed -seconds 5 ecdsap256` signatures per second (the limit)
    noloss      D devices x M QoS 1 messages through `thingward serve` (embedded or managed Mosquitto):
                every message stored exactly once (rows per thing, unique sequence numbers)

    .venv/bin/python bench/dataplane_brokers.py throughput --pairs 1 4 16 --qos 0 1
    .venv/bin/python bench/dataplane_brokers.py storm --devices 5000
    .venv/bin/python bench/dataplane_brokers.py issuance --certificates 500
    .venv/bin/python bench/dataplane_brokers.py noloss --devices 1000 --messages 100 --broker embedded mosquitto
    # quick looks: throughput --pairs 1 --messages 20000; storm --devices 200; noloss --devices 50 --messages 20

Everything runs on 127.0.0.1 in a throwaway data dir made by `thingward init`; the load generators are
tiny raw MQTT 3.1.1 clients of ours in child processes; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import os
import re
import resource
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# The same tiny MQTT 3.1.1 framing as the amqtt benchmark beside this file.
from dataplane import mqtt_string, packet

PAYLOAD = 100  # bytes, as the issue asks
IDLE_SECONDS = 10.0  # a client gives up this long after the last thing it heard
RUN_LIMIT = 300.0  # no single measurement waits longer than this
BATCH = 500  # QoS 0: messages per publisher write, and per credit the subscriber hands back
QOS1_WINDOW = 200  # QoS 1: unacknowledged PUBLISHes a publisher keeps in flight
QOS1_CREDIT = 100  # QoS 1: messages per credit; 4 credits keep 400 between publisher and subscriber
SPAWN = multiprocessing.get_context("spawn")
READERS_POLICY = {
    "description": "bench: subscribers read every thing's stream",
    "statements": [
        {
            "sid": "read-streams",
            "effect": "allow",
            "actions": ["subscribe", "receive"],
            "resources": ["things/+/stream"],
        }
    ],
}


def raise_fd_limit() -> int:
    """Thousands of sockets in one process: the soft RLIMIT_NOFILE up to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine_load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


# -- a real fleet: a data dir, things enrolled from CSRs through the service function ------------------


@dataclass
class Fleet:
    root: Path
    data_dir: Path
    devices: dict[str, tuple[str, str]]  # thing -> (certificate file, key file)
    enroll_seconds: float

    @property
    def ca(self) -> str:
        return str(self.data_dir / "pki" / "ca.crt")


def make_csr(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return csr.public_bytes(serialization.Encoding.PEM), key_pem


def add_things(platform: Any, groups: dict[str, list[str]]) -> dict[str, str]:
    """Things in their groups (created under `default`, so the default policy is inherited); one token each."""
    from thingward.platform import cli_actor
    from thingward.registry import policies, things

    actor = cli_actor()
    tokens = {}
    with platform.db.session() as session:
        for group in groups:
            if group != things.DEFAULT_GROUP:
                things.add_group(session, actor, group, parent=things.DEFAULT_GROUP)
        if "readers" in groups:
            policies.add_policy(session, actor, "bench-readers", json.dumps(READERS_POLICY))
            policies.attach_policy(session, actor, "bench-readers", group="readers")
        for group, names in groups.items():
            for name in names:
                things.add_thing(session, actor, name, groups=[group])
                tokens[name] = things.create_enrollment_token(session, actor, name, dt.timedelta(hours=1)).token
    return tokens


def build_fleet(root: Path, groups: dict[str, list[str]], quiet: bool = False) -> Fleet:
    from thingward.platform import Platform, init_data_dir

    data_dir = root / "data"
    init_data_dir(data_dir)
    platform = Platform.open(data_dir)
    try:
        tokens = add_things(platform, groups)
        requests = {name: make_csr(name) for name in tokens}
        device_dir = root / "devices"
        device_dir.mkdir(mode=0o700)
        devices = {}
        started = time.perf_counter()
        for index, (name, token) in enumerate(tokens.items()):
            enrollment = platform.enroll(token, requests[name][0], source="bench")
            cert_file, key_file = device_dir / f"{name}.crt", device_dir / f"{name}.key"
            cert_file.write_bytes(enrollment.certificate.public_bytes(serialization.Encoding.PEM))
            key_file.write_bytes(requests[name][1])
            key_file.chmod(0o600)
            devices[name] = (str(cert_file), str(key_file))
            if not quiet and index and index % 1000 == 0:
                print(f"  enrolled {index} things ...", flush=True)
        elapsed = time.perf_counter() - started
    finally:
        platform.close()
    return Fleet(root, data_dir, devices, elapsed)


# -- tiny MQTT 3.1.1 framing ------------------------------------------------------------------------------


def connect_packet(client_id: str, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0x00
    return packet(0x10, mqtt_string("MQTT") + bytes([4, flags]) + (120).to_bytes(2, "big") + mqtt_string(client_id))


def split_packets(buffer: bytearray) -> tuple[list[tuple[int, int, int]], int]:
    """(first byte, body start, body end) of each whole packet in `buffer`, and how many bytes they use."""
    found = []
    pos = 0
    size = len(buffer)
    while size - pos >= 2:
        index, length, multiplier = pos + 1, 0, 1
        while index < size:
            byte = buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        else:
            break
        end = index + length
        if end > size:
            break
        found.append((buffer[pos], index, end))
        pos = end
    return found, pos


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def connect_blocking(port: int, ca: str, cert: str, key: str, client_id: str) -> ssl.SSLSocket:
    sock = client_context(ca, cert, key).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=IDLE_SECONDS), server_hostname="localhost"
    )
    sock.sendall(connect_packet(client_id))
    connack = sock.recv(4)
    if connack != b"\x20\x02\x00\x00":
        raise SystemExit(f"{client_id}: CONNECT refused: {connack!r}")
    return sock


# -- throughput: one process per publisher and per subscriber ---------------------------------------


@dataclass(frozen=True)
class PairArgs:
    port: int
    ca: str
    pub: tuple[str, str, str]  # name, cert, key
    sub: tuple[str, str, str]
    messages: int
    qos: int
    deadline: float  # perf_counter time after which nobody sends or waits

    @property
    def topic(self) -> str:
        return f"things/{self.pub[0]}/stream"


def run_subscriber(args: PairArgs, credits: Any, ready: Any, results: Any) -> None:
    name, cert, key = args.sub
    sock = connect_blocking(args.port, args.ca, cert, key, name)
    sock.sendall(packet(0x82, (1).to_bytes(2, "big") + mqtt_string(args.topic) + bytes([args.qos])))
    sock.settimeout(1.0)
    buffer = bytearray()
    received = released = 0
    first = last = 0.0
    idle_since = time.perf_counter()
    while received < args.messages and time.perf_counter() < args.deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            if time.perf_counter() - idle_since > IDLE_SECONDS:
                break
            continue
        if not chunk:
            break
        idle_since = time.perf_counter()
        buffer += chunk
        packets, used = split_packets(buffer)
        acks = bytearray()
        for first_byte, start, _end in packets:
            kind = first_byte >> 4
            if kind == 3:
                received += 1
                if first_byte & 0x06:  # QoS 1: PUBACK the packet id after the topic
                    topic_length = int.from_bytes(buffer[start : start + 2], "big")
                    pid = buffer[start + 2 + topic_length : start + 4 + topic_length]
                    acks += b"\x40\x02" + pid
            elif kind == 9:
                ready.put(name)
        if packets and received:
            last = time.perf_counter()
            if not first:
                first = last
        del buffer[:used]
        if acks:
            sock.sendall(acks)
        unit = BATCH if args.qos == 0 else QOS1_CREDIT
        while released < received // unit:  # credit back to the publisher for every unit received
            credits.release()
            released += 1
    results.put({"received": received, "first": first, "last": last})
    sock.close()


def run_publisher(args: PairArgs, credits: Any, finished: Any, sent_counts: Any) -> None:
    name, cert, key = args.pub
    sock = connect_blocking(args.port, args.ca, cert, key, name)
    topic = mqtt_string(args.topic)
    payload = os.urandom(PAYLOAD)
    sent = 0
    if args.qos == 0:
        one = packet(0x30, topic + payload)
        while sent < args.messages and time.perf_counter() < args.deadline:
            # At most a small window between us and the subscriber: the broker is measured at the rate it
            # sustains, not drowning in a backlog it may drop.
            if not credits.acquire(timeout=IDLE_SECONDS):
                break
            count = min(BATCH, args.messages - sent)
            sock.sendall(one * count)
            sent += count
    else:
        sock.settimeout(0.5)
        inflight = allowed = 0
        buffer = bytearray()
        idle_since = time.perf_counter()
        while (sent < args.messages or inflight) and time.perf_counter() < args.deadline:
            if time.perf_counter() - idle_since > IDLE_SECONDS:
                break
            # The subscriber's credit too, not only PUBACKs: a PUBACK says the broker took the message,
            # and Mosquitto drops QoS 1 messages for a subscriber whose queue is full (1,000 here).
            wants_credit = args.messages > sent >= allowed
            if wants_credit and (credits.acquire(False) if inflight else credits.acquire(True, 0.5)):
                allowed += QOS1_CREDIT
                idle_since = time.perf_counter()
            room = min(QOS1_WINDOW - inflight, args.messages - sent, allowed - sent)
            if room > 0:
                sock.sendall(
                    b"".join(
                        packet(0x32, topic + ((sent + i) % 65535 + 1).to_bytes(2, "big") + payload) for i in range(room)
                    )
                )
                sent += room
                inflight += room
            if not inflight:
                continue
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            idle_since = time.perf_counter()
            buffer += chunk
            packets, used = split_packets(buffer)
            inflight -= sum(1 for first_byte, _s, _e in packets if first_byte >> 4 == 4)
            del buffer[:used]
    sent_counts.put(sent)
    finished.wait(max(0.0, args.deadline - time.perf_counter()))  # stay until the subscribers are done
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")
    sock.close()


@dataclass(frozen=True)
class Contender:
    name: str
    start: Callable[[], Awaitable[tuple[int, int, Callable[[], Awaitable[None]]]]]  # port, pid, stop


async def measure_pairs(
    contender: Contender, fleet: Fleet, pairs: int, qos: int, total: int, seconds: float
) -> dict[str, Any]:
    port, pid, stop = await contender.start()
    loop = asyncio.get_running_loop()
    per_pair = max(total // pairs, 1)
    deadline = time.perf_counter() + seconds + 30
    ready, results, finished, sent_counts = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    processes = []
    semaphores = []  # held here until the children are done: a spawned child unpickles them after start()
    try:
        subscribers, publishers = [], []
        for i in range(pairs):
            pub, sub = f"pub-{i}", f"sub-{i}"
            args = PairArgs(
                port, fleet.ca, (pub, *fleet.devices[pub]), (sub, *fleet.devices[sub]), per_pair, qos, deadline
            )
            credits = SPAWN.Semaphore(4)
            semaphores.append(credits)
            subscribers.append(SPAWN.Process(target=run_subscriber, args=(args, credits, ready, results)))
            publishers.append(SPAWN.Process(target=run_publisher, args=(args, credits, finished, sent_counts)))
        for process in subscribers:
            process.start()
            processes.append(process)
        for _ in range(pairs):
            await loop.run_in_executor(None, ready.get, True, 60)
        cpu_before = cpu_seconds(pid)
        for process in publishers:
            process.start()
            processes.append(process)
        outcomes = [await loop.run_in_executor(None, results.get, True, seconds + 60) for _ in range(pairs)]
        cpu = cpu_seconds(pid) - cpu_before
        sent = sum([await loop.run_in_executor(None, sent_counts.get, True, 30) for _ in range(pairs)])
    finally:
        finished.set()
        for process in processes:
            await loop.run_in_executor(None, process.join, 20)
            if process.is_alive():
                process.kill()
        await stop()
    received = sum(o["received"] for o in outcomes)
    firsts = [o["first"] for o in outcomes if o["first"]]
    lasts = [o["last"] for o in outcomes if o["last"]]
    window = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    return {
        "received": received,
        "sent": sent,
        "rate": received / window if window > 0 else 0.0,
        "cpu_us": cpu / received * 1e6 if received else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used, from /proc/PID/stat (a saturation-free cost per message)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_tls(fleet: Fleet) -> Any:
    from thingward.broker.base import BrokerTls

    pki = fleet.data_dir / "pki"
    return BrokerTls(pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "crl.pem")


def open_engine(fleet: Fleet) -> tuple[Any, Any]:
    from thingward.platform import Platform
    from thingward.policy.engine import PolicyEngine
    from thingward.registry.policies import load_policy_world

    platform = Platform.open(fleet.data_dir)
    with platform.db.read() as session:
        engine = PolicyEngine(load_policy_world(session))
    return platform, engine


def report_drops(name: str, log: Any) -> None:
    """Mosquitto says when it drops a client's messages (its queue is full): show it beside the figures."""
    for line in log:
        if "dropped" in line:
            print(f"          {name} Mosquitto: {line}", flush=True)


def contenders(fleet: Fleet, max_connections: int, work: Path) -> list[Contender]:
    from thingward.broker.base import BrokerLimits
    from thingward.broker.embedded import EmbeddedBroker
    from thingward.broker.mosquitto import ManagedMosquitto, raw_mosquitto

    limits = BrokerLimits(max_connections=max_connections)

    async def raw() -> tuple[int, int, Callable[[], Awaitable[None]]]:
        process, port = await raw_mosquitto(work / "raw", broker_tls(fleet), limits=limits)

        async def stop() -> None:
            report_drops("raw", process.tail)
            await process.stop()

        return port, process.pid, stop

    async def managed() -> tuple[int, int, Callable[[], Awaitable[None]]]:
        platform, engine = open_engine(fleet)
        broker = ManagedMosquitto(
            host="127.0.0.1",
            port=0,
            tls=broker_tls(fleet),
            limits=limits,
            authorizer=engine,
            world=lambda: engine.world,
            ca=lambda: platform.ca,
            work_dir=work / "managed",
            on_message=lambda message: None,
        )
        await broker.start()

        async def stop() -> None:
            report_drops("managed", broker._process.tail if broker._process else [])
            await broker.stop()
            platform.close()

        return broker.port, broker.pid, stop

    async def embedded() -> tuple[int, int, Callable[[], Awaitable[None]]]:
        platform, engine = open_engine(fleet)
        platform.close()
        broker = EmbeddedBroker(
            host="127.0.0.1",
            port=0,
            tls=broker_tls(fleet),
            # The per-thing publish bucket still runs on every message, with a rate no publisher reaches.
            limits=BrokerLimits(max_publish_per_second=10**9, max_connections=max_connections),
            authorizer=engine,
            on_message=lambda message: None,
        )
        await broker.start()
        return broker.port, os.getpid(), broker.stop

    return [
        Contender("raw Mosquitto (mTLS, no ACL)", raw),
        Contender("managed Mosquitto (mTLS, thingward ACL)", managed),
        Contender("embedded broker (mTLS, CRL, policy)", embedded),
    ]


async def throughput(args: argparse.Namespace) -> None:
    raise_fd_limit()
    largest = max(args.pairs)
    with tempfile.TemporaryDirectory(prefix="thingward-bench-") as tmp:
        root = Path(tmp)
        fleet = build_fleet(
            root,
            {"default": [f"pub-{i}" for i in range(largest)], "readers": [f"sub-{i}" for i in range(largest)]},
            quiet=True,
        )
        brokers = contenders(fleet, 10_000, root / "brokers")
        if args.skip_embedded:
            brokers = brokers[:2]
        print(f"# {machine_load()}")
        print(
            f"# throughput: {PAYLOAD}-byte payloads, {args.messages} messages per measurement shared by the pairs, "
            f"{args.runs} run(s) each, brokers alternating; msg/s counted at the subscribers"
        )
        header = f"{'qos':>3} {'pairs':>5}  " + "  ".join(f"{b.name.split(' (')[0]:>18}" for b in brokers)
        print(header + f"  {'managed/raw':>11}" + (f"  {'embedded/raw':>12}" if len(brokers) > 2 else ""))
        for qos in args.qos:
            for pairs in args.pairs:
                rates: dict[str, list[float]] = {b.name: [] for b in brokers}
                lost: dict[str, int] = {b.name: 0 for b in brokers}
                cpu: dict[str, list[float]] = {b.name: [] for b in brokers}
                for run in range(args.runs):
                    order = brokers[run % len(brokers) :] + brokers[: run % len(brokers)]
                    for broker in order:
                        total = args.messages if "embedded" not in broker.name else max(args.messages // 4, 1000)
                        outcome = await measure_pairs(broker, fleet, pairs, qos, total, args.seconds)
                        rates[broker.name].append(outcome["rate"])
                        lost[broker.name] += outcome["sent"] - outcome["received"]
                        cpu[broker.name].append(outcome["cpu_us"])
                medians = {name: statistics.median(values) for name, values in rates.items()}
                raw = medians[brokers[0].name] or 1.0
                cells = "  ".join(f"{medians[b.name]:>18,.0f}" for b in brokers)
                line = f"{qos:>3} {pairs:>5}  {cells}  {medians[brokers[1].name] / raw:>11.2f}"
                if len(brokers) > 2:
                    line += f"  {medians[brokers[2].name] / raw:>12.3f}"
                missing = {name.split(" (")[0]: count for name, count in lost.items() if count}
                runs = {name.split(" (")[0]: [round(r) for r in values] for name, values in rates.items()}
                print(line + (f"   not received: {missing}" if missing else "") + f"   runs: {runs}", flush=True)
                costs = {name.split(" (")[0]: round(statistics.median(values), 1) for name, values in cpu.items()}
                raw_cost = statistics.median(cpu[brokers[0].name]) or 1.0
                print(
                    f"          broker CPU per message (µs, median): {costs}; "
                    f"managed/raw {statistics.median(cpu[brokers[1].name]) / raw_cost:.2f}",
                    flush=True,
                )


# -- storm and no-loss: many TLS clients per process on asyncio -------------------------------------


@dataclass(frozen=True)
class CrowdArgs:
    port: int
    ca: str
    devices: tuple[tuple[str, str, str], ...]
    messages: int  # 0: connect and hold (storm); else QoS 1 messages each (no loss)
    concurrency: int  # handshakes in progress at once in this process (0: all at once)
    window: int


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    length, multiplier, byte = 0, 1, head[1]
    while True:
        length += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            break
        multiplier *= 128
        byte = (await reader.readexactly(1))[0]
    return head[0], await reader.readexactly(length) if length else b""


async def _crowd(args: CrowdArgs, ready: Any, go: Any, release: Any, results: Any) -> None:
    loop = asyncio.get_running_loop()
    contexts = {name: client_context(args.ca, cert, key) for name, cert, key in args.devices}
    ready.put(len(contexts))
    gate = asyncio.Semaphore(args.concurrency or len(args.devices))
    connected: list[float] = []
    failures: dict[str, int] = {}
    acked = 0
    writers: list[asyncio.StreamWriter] = []

    async def device(name: str) -> None:
        nonlocal acked
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        "127.0.0.1",
                        args.port,
                        ssl=contexts[name],
                        server_hostname="localhost",
                        ssl_handshake_timeout=RUN_LIMIT / 2,  # asyncio's default 60 s is short for a storm
                    ),
                    RUN_LIMIT / 2,
                )
                writers.append(writer)
                writer.write(connect_packet(name))
                kind, body = await asyncio.wait_for(_read_packet(reader), IDLE_SECONDS * 3)
                if kind != 0x20 or body[-1:] != b"\x00":
                    raise ConnectionError(f"CONNACK {kind:#x} {body!r}")
                connected.append(time.perf_counter())
            if not args.messages:
                return
            topic = mqtt_string(f"things/{name}/telemetry")
            sent = inflight = mine = 0
            while mine < args.messages:
                while inflight < args.window and sent < args.messages:
                    sent += 1  # the packet id is the sequence number (messages <= 65535)
                    body = json.dumps({"seq": sent, "thing": name}).encode().ljust(PAYLOAD)
                    writer.write(packet(0x32, topic + sent.to_bytes(2, "big") + body))
                    inflight += 1
                kind, _ = await asyncio.wait_for(_read_packet(reader), IDLE_SECONDS * 3)
                if kind >> 4 == 4:
                    inflight -= 1
                    mine += 1
            acked += mine
            writer.write(b"\xe0\x00")
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
            reason = str(e)[:60] if isinstance(e, ConnectionError) and str(e) else type(e).__name__
            failures[reason] = failures.get(reason, 0) + 1

    await loop.run_in_executor(None, go.wait, RUN_LIMIT)
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(device(name) for name, _c, _k in args.devices)), RUN_LIMIT)
    results.put(
        {
            "connected": len(connected),
            "started": started,
            "last": max(connected) if connected else started,
            "failures": failures,
            "acked": acked,
        }
    )
    await loop.run_in_executor(None, release.wait, RUN_LIMIT)
    for writer in writers:
        writer.close()


def run_crowd(args: CrowdArgs, ready: Any, go: Any, release: Any, results: Any) -> None:
    raise_fd_limit()
    asyncio.run(_crowd(args, ready, go, release, results))


# -- storm -------------------------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts) if items[i::parts]]


@contextlib.asynccontextmanager
async def crowd(
    port: int, fleet: Fleet, names: list[str], args: argparse.Namespace, messages: int
) -> AsyncIterator[dict[str, Any]]:
    """Start the worker processes, let them all go at once, and gather what they saw; the devices keep
    their connections until the block ends, then the workers are stopped (killed if they hang)."""
    loop = asyncio.get_running_loop()
    ready, go, release, results = SPAWN.Queue(), SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    groups = split([(name, *fleet.devices[name]) for name in names], args.workers)
    processes = [
        SPAWN.Process(
            target=run_crowd,
            args=(
                CrowdArgs(port, fleet.ca, tuple(group), messages, args.concurrency, args.window),
                ready,
                go,
                release,
                results,
            ),
        )
        for group in groups
    ]
    for process in processes:
        process.start()
    try:
        for _ in groups:  # every worker has built its devices' TLS contexts: then they all go at once
            await loop.run_in_executor(None, ready.get, True, RUN_LIMIT)
        started = time.perf_counter()
        go.set()
        outcomes = [await loop.run_in_executor(None, results.get, True, RUN_LIMIT + 30) for _ in groups]
        finished = time.perf_counter()
        failures: dict[str, int] = {}
        for outcome in outcomes:
            for reason, count in outcome["failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        yield {
            "connected": sum(o["connected"] for o in outcomes),
            "seconds": max(o["last"] for o in outcomes) - started,
            "all_done_seconds": finished - started,
            "acked": sum(o["acked"] for o in outcomes),
            "failures": failures,
            "started": started,
        }
    finally:
        go.set()
        release.set()
        for process in processes:
            await loop.run_in_executor(None, process.join, 30)
            if process.is_alive():
                process.kill()


async def storm(args: argparse.Namespace) -> None:
    limit = raise_fd_limit()
    if args.devices + 200 > limit:
        raise SystemExit(
            f"--devices {args.devices}: the open-file limit here is {limit}; the broker needs one per device"
        )
    with tempfile.TemporaryDirectory(prefix="thingward-bench-") as tmp:
        root = Path(tmp)
        names = [f"dev-{i:05d}" for i in range(args.devices)]
        fleet = build_fleet(root, {"default": names})
        print(f"# {machine_load()}")
        print(
            f"# storm: {args.devices} mTLS devices ({args.workers} client processes, "
            f"{'all at once' if not args.concurrency else f'{args.concurrency} handshakes at a time per process'}); "
            f"{len(fleet.devices)} things enrolled in {fleet.enroll_seconds:.1f} s"
        )
        print(f"{'broker':40} {'connected':>9} {'seconds':>8} {'conn/s':>8} {'RSS idle':>9} {'RSS all':>9} {'peak':>9}")
        brokers = contenders(fleet, args.devices + 100, root / "brokers")[:2]
        figures: dict[str, list[float]] = {b.name: [] for b in brokers}
        for run in range(args.runs):
            for broker in brokers if run % 2 == 0 else brokers[::-1]:
                port, pid, stop = await broker.start()
                try:
                    idle = proc_memory(pid)
                    async with crowd(port, fleet, names, args, 0) as summary:
                        loaded = proc_memory(pid)
                finally:
                    await stop()
                seconds = summary["seconds"]
                figures[broker.name].append(seconds)
                failures = f"   failures: {summary['failures']}" if summary["failures"] else ""
                print(
                    f"{broker.name:40} {summary['connected']:>9} {seconds:>8.2f} "
                    f"{summary['connected'] / seconds:>8,.0f} "
                    f"{idle['VmRSS'] / 1024:>7.1f}MB {loaded['VmRSS'] / 1024:>7.1f}MB {loaded['VmHWM'] / 1024:>7.1f}MB"
                    + failures,
                    flush=True,
                )
        raw, managed = (statistics.median(figures[b.name]) for b in brokers)
        print(f"managed/raw time to all connected: {managed / raw:.2f} (median of {args.runs})")


# -- issuance ----------------------------------------------------------------------------------------


def openssl_signs_per_second(seconds: int) -> float:
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "ecdsap256"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        # " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  48000.0  15000.0"
        if "nistp256" in line and len(fields) >= 6 and re.fullmatch(r"[0-9.]+", fields[-2]):
            return float(fields[-2])
    raise SystemExit(f"could not read openssl speed's output: {out!r}")


def enroll_over_https(api: str, ca: str, tokens: dict[str, str], requests: dict[str, tuple[bytes, bytes]]) -> float:
    context = ssl.create_default_context(cafile=ca)
    started = time.perf_counter()
    for name, token in tokens.items():
        body = json.dumps({"token": token, "csr": requests[name][0].decode()}).encode()
        request = urllib.request.Request(
            f"{api}/api/v1/enroll", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            if response.status != 201:
                raise SystemExit(f"enroll {name}: HTTP {response.status}")
    return time.perf_counter() - started


def serve(data_dir: Path, broker: str, port: int = 0) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`thingward serve --json` in a child process; returns it and the endpoints it printed."""
    command = [sys.executable, "-m", "thingward.cli.main", "serve", "--data-dir", str(data_dir)]
    command += ["--broker", broker, "--mqtt-port", str(port), "--http-port", "0", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if process.stdout is None or not select.select([process.stdout], [], [], 60)[0]:
        stop_serve(process)
        raise SystemExit("thingward serve printed no endpoints within 60 s")
    line = process.stdout.readline()  # serve prints its endpoints once it listens
    if not line:
        stop_serve(process)
        raise SystemExit("thingward serve did not start")
    return process, json.loads(line)


def stop_serve(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)  # serve stops cleanly: its writer flushes what it holds
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def issuance(args: argparse.Namespace) -> None:
    from thingward.pki.ca import issue_device_certificate
    from thingward.platform import Platform, init_data_dir

    count = args.certificates
    with tempfile.TemporaryDirectory(prefix="thingward-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        init_data_dir(data_dir)
        platform = Platform.open(data_dir)
        try:
            names = [f"dev-{i:05d}" for i in range(count)]
            https_names = [f"web-{i:05d}" for i in range(args.https)]
            tokens = add_things(platform, {"default": names + https_names})
            requests = {name: make_csr(name) for name in tokens}
            csrs = {name: x509.load_pem_x509_csr(requests[name][0]) for name in names}
            ca = platform.ca
            started = time.perf_counter()
            for name in names:
                issue_device_certificate(ca, csrs[name], name, dt.timedelta(days=30))
            ca_seconds = time.perf_counter() - started
            started = time.perf_counter()
            for name in names:
                platform.enroll(tokens[name], requests[name][0], source="bench")
            service_seconds = time.perf_counter() - started
        finally:
            platform.close()
        https_seconds = 0.0
        if args.https:
            process, endpoints = serve(data_dir, "embedded")
            try:
                https_seconds = enroll_over_https(
                    endpoints["api"], endpoints["ca_certificate"], {n: tokens[n] for n in https_names}, requests
                )
            finally:
                stop_serve(process)
    openssl = openssl_signs_per_second(args.openssl_seconds)
    print(f"# {machine_load()}")
    print(
        f"# issuance: {count} real CSRs (EC P-256), one thread; openssl speed -seconds {args.openssl_seconds} ecdsap256"
    )
    print(f"{'what':62} {'per second':>10} {'of openssl':>10}")
    rows = [
        ("openssl ECDSA P-256 signatures (the limit)", openssl),
        ("CA alone: issue_device_certificate from a parsed CSR", count / ca_seconds),
        ("service: Platform.enroll (token, CSR checks, registry, audit)", count / service_seconds),
    ]
    if args.https:
        rows.append(("HTTPS: POST /api/v1/enroll, one client, serve running", args.https / https_seconds))
    for what, rate in rows:
        print(f"{what:62} {rate:>10,.0f} {rate / openssl:>10.3f}")


# -- no loss -------------------------------------------------------------------------------------------


def count_stored(data_dir: Path) -> int:
    from sqlalchemy import func, select

    from thingward.platform import Platform
    from thingward.registry.models import Message

    platform = Platform.open(data_dir)
    try:
        with platform.db.read() as session:
            return int(session.execute(select(func.count(Message.id))).scalar_one())
    finally:
        platform.close()


def check_stored(data_dir: Path, names: list[str], messages: int) -> dict[str, Any]:
    from sqlalchemy import select

    from thingward.platform import Platform
    from thingward.registry.models import Message, Thing

    seen: dict[str, list[int]] = {name: [] for name in names}
    platform = Platform.open(data_dir)
    try:
        with platform.db.read() as session:
            for thing, payload in session.execute(
                select(Thing.name, Message.payload).join(Message, Message.thing_id == Thing.id)
            ):
                seen.setdefault(thing, []).append(int(json.loads(payload)["seq"]))
    finally:
        platform.close()
    wanted = set(range(1, messages + 1))
    return {
        "stored": sum(len(v) for v in seen.values()),
        "duplicates": sum(len(v) - len(set(v)) for v in seen.values()),
        "missing": sum(len(wanted - set(v)) for v in seen.values()),
        "things_complete": sum(1 for v in seen.values() if sorted(v) == sorted(wanted)),
    }


async def noloss(args: argparse.Namespace) -> None:
    raise_fd_limit()
    if args.messages > 65535:
        raise SystemExit("--messages: at most 65535 per device (the sequence number is the packet id)")
    print(f"# {machine_load()}")
    print(
        f"# no loss: {args.devices} devices x {args.messages} QoS 1 messages of {PAYLOAD} B on things/NAME/telemetry, "
        f"through `thingward serve`, {args.workers} client processes, {args.window} in flight per device"
    )
    print(
        f"{'broker':10} {'acked':>8} {'stored':>8} {'dups':>5} {'missing':>8} {'complete':>9} "
        f"{'send s':>7} {'stored s':>8}"
    )
    for broker in args.broker:
        with tempfile.TemporaryDirectory(prefix="thingward-bench-") as tmp:
            names = [f"dev-{i:05d}" for i in range(args.devices)]
            fleet = build_fleet(Path(tmp), {"default": names}, quiet=True)
            process, endpoints = serve(fleet.data_dir, broker)
            try:
                port = int(endpoints["mqtt"].rsplit(":", 1)[1])
                async with crowd(port, fleet, names, args, args.messages) as summary:
                    pass
                expected = args.devices * args.messages
                # Stored in batches after the PUBACK: wait until the count reaches what was sent, or stops moving.
                deadline, last, still = time.monotonic() + RUN_LIMIT, -1, time.monotonic()
                while time.monotonic() < deadline:
                    stored = count_stored(fleet.data_dir)
                    if stored >= expected:
                        break
                    if stored != last:
                        last, still = stored, time.monotonic()
                    elif time.monotonic() - still > 15:
                        break
                    await asyncio.sleep(0.5)
                stored_seconds = time.perf_counter() - summary["started"]
            finally:
                stop_serve(process)
            result = check_stored(fleet.data_dir, names, args.messages)
            failures = f"   failures: {summary['failures']}" if summary["failures"] else ""
            print(
                f"{broker:10} {summary['acked']:>8} {result['stored']:>8} {result['duplicates']:>5} "
                f"{result['missing']:>8} "
                f"{result['things_complete']:>9} {summary['all_done_seconds']:>7.1f} {stored_seconds:>8.1f}" + failures,
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tp = commands.add_parser("throughput", help="msg/s: raw Mosquitto, managed Mosquitto, embedded broker")
    tp.add_argument("--pairs", type=int, nargs="+", default=[1, 4, 16])
    tp.add_argument("--qos", type=int, nargs="+", choices=(0, 1), default=[0, 1])
    tp.add_argument("--messages", type=int, default=100_000, help="per measurement, shared by the pairs")
    tp.add_argument("--runs", type=int, default=1)
    tp.add_argument("--seconds", type=float, default=60.0, help="time limit of one measurement's sending")
    tp.add_argument("--skip-embedded", action="store_true")
    st = commands.add_parser("storm", help="D mTLS devices connect at once: time and broker memory")
    st.add_argument("--devices", type=int, default=5000)
    st.add_argument("--runs", type=int, default=1)
    nl = commands.add_parser("noloss", help="D devices x M QoS 1 messages, every one stored exactly once")
    nl.add_argument("--devices", type=int, default=1000)
    nl.add_argument("--messages", type=int, default=100)
    nl.add_argument("--window", type=int, default=10, help="QoS 1 messages in flight per device")
    nl.add_argument("--broker", nargs="+", choices=("embedded", "mosquitto"), default=["embedded", "mosquitto"])
    for sub in (st, nl):
        sub.add_argument("--workers", type=int, default=4, help="client processes")
        sub.add_argument("--concurrency", type=int, default=0, help="handshakes at a time per process; 0: all")
    st.set_defaults(window=0)
    iss = commands.add_parser("issuance", help="certificates from CSRs per second beside openssl speed")
    iss.add_argument("--certificates", type=int, default=500)
    iss.add_argument("--https", type=int, default=100, help="enrollments through the HTTPS endpoint; 0 skips")
    iss.add_argument("--openssl-seconds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runner = {"throughput": throughput, "storm": storm, "noloss": noloss, "issuance": issuance}[args.command]
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
