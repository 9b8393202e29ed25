"""Data-plane throughput: thingward's embedded broker (mTLS + checks) beside stock amqtt with TLS, same load, same run.

One publisher and one subscriber, each a tiny raw MQTT 3.1.1 client over TLS in its own process, so the
broker (in this process) has a core to itself. QoS 0, `--messages` messages of `--size` bytes.

    .venv/bin/python bench/dataplane.py --messages 100000 --size 32 --runs 2

The publisher sends everything, then keeps its connection open until the subscriber has all messages
(or stalls), so amqtt's loss of a disconnecting client's queued QoS 0 messages does not distort the
figures. The rate is counted at the subscriber, from its first message to its last.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOPIC = "things/bench-pub/telemetry"
IDLE_SECONDS = 10.0  # the subscriber gives up this long after its last message
BATCH = 500  # messages per publisher write, and per credit the subscriber hands back


# -- throwaway PKI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    ca: Path
    server_cert: Path
    server_key: Path
    crl: Path
    devices: dict[str, tuple[Path, Path]]


def make_pki(directory: Path) -> Material:
    from thingward.pki.ca import (
        build_crl,
        build_root_ca,
        certificate_pem,
        crl_pem,
        issue_device_certificate,
        issue_server_certificate,
        private_key_pem,
    )

    ca = build_root_ca("bench CA")
    (directory / "ca.crt").write_bytes(certificate_pem(ca.certificate))
    key, cert = issue_server_certificate(ca, [])
    (directory / "server.crt").write_bytes(certificate_pem(cert))
    (directory / "server.key").write_bytes(private_key_pem(key))
    (directory / "crl.pem").write_bytes(crl_pem(build_crl(ca, [])))
    devices = {}
    for name in ("bench-pub", "bench-sub"):
        device_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(device_key, hashes.SHA256())
        )
        device_cert = issue_device_certificate(ca, csr, name, dt.timedelta(days=1))
        (directory / f"{name}.crt").write_bytes(certificate_pem(device_cert))
        (directory / f"{name}.key").write_bytes(private_key_pem(device_key))
        devices[name] = (directory / f"{name}.crt", directory / f"{name}.key")
    return Material(
        directory / "ca.crt", directory / "server.crt", directory / "server.key", directory / "crl.pem", devices
    )


# -- an authorizer that does real checks --------------------------------------------------------------


class PatternAuthorizer:
    """Per-thing topic patterns with `${thing}` substituted, compiled to regexes on first use.

    The shape of a policy engine's hot path: a per-thing compiled matcher, a dictionary lookup and a
    regex match on every call; nothing is answered without looking at the topic.
    """

    RULES: ClassVar[dict[str, tuple[str, ...]]] = {
        "publish": ("things/${thing}/#",),
        "subscribe": ("things/${thing}/#", "things/+/telemetry"),
        "receive": ("things/${thing}/#", "things/+/telemetry"),
    }

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str], re.Pattern[str]] = {}

    @staticmethod
    def _to_regex(pattern: str) -> str:
        parts = []
        for level in pattern.split("/"):
            parts.append("[^/]+" if level == "+" else ".*" if level == "#" else re.escape(level))
        return "/".join(parts).replace("/.*", "(/.*)?")

    def authorize(self, thing: str, action: str, topic: str) -> bool:
        if action == "connect":
            return topic == thing
        matcher = self._compiled.get((thing, action))
        if matcher is None:
            patterns = [p.replace("${thing}", thing) for p in self.RULES.get(action, ())]
            matcher = re.compile("|".join(f"(?:{self._to_regex(p)})" for p in patterns) or "(?!)")
            self._compiled[(thing, action)] = matcher
        return matcher.fullmatch(topic) is not None


# -- tiny raw MQTT clients (run in child processes) ---------------------------------------------------


def mqtt_string(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def _connect_tls(port: int, ca: str, cert: str, key: str, client_id: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    body = mqtt_string("MQTT") + bytes([4, 0x02]) + (60).to_bytes(2, "big") + mqtt_string(client_id)
    sock.sendall(packet(0x10, body))
    connack = sock.recv(4)
    if connack != b"\x20\x02\x00\x00":
        raise SystemExit(f"{client_id}: CONNECT refused: {connack!r}")
    return sock


@dataclass(frozen=True)
class ClientArgs:
    port: int
    ca: str
    cert: str
    key: str
    messages: int
    size: int
    window: int


def run_subscriber(args: ClientArgs, credits: Any, ready: Any, results: Any) -> None:
    sock = _connect_tls(args.port, args.ca, args.cert, args.key, "bench-sub")
    sock.sendall(packet(0x82, (1).to_bytes(2, "big") + mqtt_string(TOPIC) + b"\x00"))
    sock.settimeout(IDLE_SECONDS)
    buffer = bytearray()
    received = released = 0
    first = last = 0.0
    while received < args.messages:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        pos = 0
        while len(buffer) - pos >= 2:
            index, length, multiplier = pos + 1, 0, 1
            while index < len(buffer):
                byte = buffer[index]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    break
            else:
                break
            end = index + length
            if end > len(buffer):
                break
            kind = buffer[pos] >> 4
            if kind == 3:
                received += 1
                last = time.perf_counter()
                if received == 1:
                    first = last
            elif kind == 9:
                ready.set()
            pos = end
        del buffer[:pos]
        while released < received // BATCH:  # give the publisher credit for every batch received
            credits.release()
            released += 1
    results.put({"received": received, "seconds": last - first if received > 1 else 0.0})
    sock.close()


def run_publisher(args: ClientArgs, credits: Any, finished: Any) -> None:
    sock = _connect_tls(args.port, args.ca, args.cert, args.key, "bench-pub")
    one = packet(0x30, mqtt_string(TOPIC) + os.urandom(args.size))
    batch = one * BATCH
    sent = 0
    while sent < args.messages:
        # At most `window` messages between us and the subscriber (it hands back a credit per batch it
        # receives): the broker is measured at the rate it sustains, not drowning in a backlog.
        if args.window and not credits.acquire(timeout=IDLE_SECONDS):
            break
        count = min(BATCH, args.messages - sent)
        sock.sendall(batch if count == BATCH else one * count)
        sent += count
    finished.wait(600)  # stay connected until the subscriber is done (amqtt drops QoS 0 on DISCONNECT)
    sock.sendall(b"\xe0\x00")
    sock.close()


# -- the brokers (in this process) --------------------------------------------------------------------


async def start_stock(material: Material) -> tuple[Any, int, Callable[[], Any]]:
    from amqtt.broker import Broker

    broker = Broker(
        {
            "listeners": {
                "default": {
                    "type": "tcp",
                    "bind": "127.0.0.1:0",
                    "ssl": True,
                    "certfile": str(material.server_cert),
                    "keyfile": str(material.server_key),
                    "cafile": str(material.ca),
                }
            },
            # amqtt refuses every client unless an auth plugin says yes: the anonymous one, no checks.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    port = broker._servers["default"].instance.sockets[0].getsockname()[1]
    return broker, port, broker.shutdown


async def start_thingward(material: Material) -> tuple[Any, int, Callable[[], Any]]:
    from thingward.broker.base import BrokerLimits, BrokerTls, InboundMessage
    from thingward.broker.embedded import EmbeddedBroker

    stored: list[int] = [0]

    def sink(message: InboundMessage) -> None:  # the core's sink is quick: count, do not store
        stored[0] += 1

    broker = EmbeddedBroker(
        host="127.0.0.1",
        port=0,
        tls=BrokerTls(material.server_cert, material.server_key, material.ca, material.crl),
        limits=BrokerLimits(max_publish_per_second=10**9),  # the bucket still runs on every message
        authorizer=PatternAuthorizer(),
        on_message=sink,
    )
    await broker.start()
    return broker, broker.port, broker.stop


async def measure(name: str, starter: Any, material: Material, messages: int, size: int, window: int) -> dict[str, Any]:
    _broker, port, stop = await starter(material)
    loop = asyncio.get_running_loop()
    spawn = multiprocessing.get_context("spawn")
    credits = spawn.Semaphore(max(window // BATCH, 1))
    ready, finished, results = spawn.Event(), spawn.Event(), spawn.Queue()

    def client(device: str) -> ClientArgs:
        cert, key = material.devices[device]
        return ClientArgs(port, str(material.ca), str(cert), str(key), messages, size, window)

    subscriber = spawn.Process(target=run_subscriber, args=(client("bench-sub"), credits, ready, results))
    publisher = spawn.Process(target=run_publisher, args=(client("bench-pub"), credits, finished))
    subscriber.start()
    try:
        if not await loop.run_in_executor(None, ready.wait, 30):
            raise RuntimeError(f"{name}: the subscriber did not get its SUBACK")
        publisher.start()
        result: dict[str, Any] = await loop.run_in_executor(None, results.get, True, 900)
    finally:
        finished.set()
        for process in (publisher, subscriber):
            if process.pid is not None:
                await loop.run_in_executor(None, process.join, 30)
            if process.is_alive():
                process.kill()
        await stop()
    seconds = result["seconds"]
    result.update(name=name, rate=result["received"] / seconds if seconds else 0.0)
    return result


async def orchestrate(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="thingward-bench-") as tmp:
        material = make_pki(Path(tmp))
        contenders = [
            ("amqtt 0.12.1 stock, TLS, no checks", start_stock),
            ("thingward embedded, mTLS + CRL + checks", start_thingward),
        ]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
        for run in range(args.runs):
            # Alternate the order so neither broker always runs on a warmer machine.
            order = contenders if run % 2 == 0 else list(reversed(contenders))
            for name, starter in order:
                results[name].append(await measure(name, starter, material, args.messages, args.size, args.window))
    baseline = statistics.median(r["rate"] for r in results[contenders[0][0]])
    pacing = f"publisher window {args.window}" if args.window else "publisher floods (no window)"
    print(f"\nQoS 0, {args.messages} messages of {args.size} B, 1 publisher -> 1 subscriber, {pacing},")
    print(f"{args.runs} run(s) each, brokers alternating;")
    print(f"{os.cpu_count()} CPU(s); median msg/s over runs; received = at the subscriber in the last run\n")
    print(f"{'broker':42} {'received':>9} {'msg/s':>9} {'ratio':>6}   runs (msg/s)")
    for name, _ in contenders:
        rates = [r["rate"] for r in results[name]]
        median = statistics.median(rates)
        runs = ", ".join(f"{rate:,.0f}" for rate in rates)
        print(f"{name:42} {results[name][-1]['received']:>9} {median:>9,.0f} {median / baseline:>6.2f}   {runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--window", type=int, default=2000, help="most messages in flight between publisher and subscriber; 0 floods"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
