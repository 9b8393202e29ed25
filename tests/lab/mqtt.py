"""The MQTT test lab shared by the broker and red-team tests: a throwaway PKI and the broker in a thread.

Everything is real: a CA and certificates made here in a temp dir, the embedded broker on its own event
loop on a free loopback port. Imported by the conftests of tests/broker and tests/redteam.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from thingward.broker.base import BrokerLimits, BrokerTls, InboundMessage
from thingward.broker.embedded import EmbeddedBroker
from thingward.pki.ca import (
    CertificateAuthority,
    build_crl,
    build_root_ca,
    certificate_pem,
    crl_pem,
    issue_device_certificate,
    issue_server_certificate,
    private_key_pem,
    utcnow,
)
from thingward.pki.files import write_atomic, write_secret

WAIT = 5.0  # seconds: the bound on every wait for something that should happen


@dataclass(frozen=True)
class Creds:
    name: str
    cert: Path
    key: Path
    serial: int


class Pki:
    """A root CA, a server certificate, device certificates and a CRL, all in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = build_root_ca("thingward test CA")
        self.ca_file = self.dir / "ca.crt"
        write_atomic(self.ca_file, certificate_pem(self.ca.certificate))
        key, cert = issue_server_certificate(self.ca, [])
        self.server_cert = self.dir / "server.crt"
        self.server_key = self.dir / "server.key"
        write_atomic(self.server_cert, certificate_pem(cert))
        write_secret(self.server_key, private_key_pem(key))
        self.server_serial = cert.serial_number
        self.crl_file = self.dir / "crl.pem"
        self.revoked: list[int] = []
        self.write_crl()

    @property
    def tls(self) -> BrokerTls:
        return BrokerTls(
            cert_file=self.server_cert, key_file=self.server_key, ca_file=self.ca_file, crl_file=self.crl_file
        )

    def device(
        self,
        name: str,
        *,
        ca: CertificateAuthority | None = None,
        now: dt.datetime | None = None,
        validity: dt.timedelta = dt.timedelta(days=1),
        label: str | None = None,
    ) -> Creds:
        """A device key and certificate for thing `name` (from `ca`, default ours), saved as <label>.crt/.key."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        cert = issue_device_certificate(ca or self.ca, csr, name, validity, now=now)
        label = label or name
        cert_path, key_path = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        write_atomic(cert_path, certificate_pem(cert))
        write_secret(key_path, private_key_pem(key))
        return Creds(name=name, cert=cert_path, key=key_path, serial=cert.serial_number)

    def custom(
        self,
        label: str,
        *,
        cn: str | None,
        uris: list[str] | None,
        eku: list[x509.ObjectIdentifier] | None = None,
        dns: list[str] | None = None,
    ) -> Creds:
        """A CA-signed client certificate with a hand-chosen subject, SAN and EKU (what a CA bug could issue)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = utcnow()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty CN is out of spec: exactly what this certificate is for
            subject = x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)] if cn is not None else []
            )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris or []]
        names += [x509.DNSName(d) for d in dns or []]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not subject)
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        cert = builder.sign(self.ca.key, hashes.SHA256())
        return self.save(cn or "", cert, key, label)

    def save(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, label: str) -> Creds:
        """Save a hand-built certificate and its key as credentials claiming thing `name`."""
        cert_path, key_path = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        write_atomic(cert_path, certificate_pem(cert))
        write_secret(key_path, private_key_pem(key))
        return Creds(name=name, cert=cert_path, key=key_path, serial=cert.serial_number)

    def write_crl(self, *revoked: int) -> None:
        self.revoked.extend(revoked)
        write_atomic(self.crl_file, crl_pem(build_crl(self.ca, [(serial, utcnow()) for serial in self.revoked])))


class BrokerHarness:
    """An EmbeddedBroker on its own event loop in a daemon thread, as the platform runs it."""

    def __init__(self, broker_kwargs: dict[str, Any]) -> None:
        self.messages: queue.Queue[InboundMessage] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="broker-loop", daemon=True)
        self.thread.start()
        broker_kwargs.setdefault("on_message", self.messages.put)
        self.broker = EmbeddedBroker(**broker_kwargs)
        self.call(self.broker.start())

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        """Run a plain function on the broker loop (to read amqtt state without racing it)."""

        async def wrapper() -> Any:
            return fn()

        return self.call(wrapper(), timeout)

    @property
    def core(self) -> Any:
        return self.broker._core

    @property
    def port(self) -> int:
        return self.broker.port

    def next_message(self, timeout: float = WAIT) -> InboundMessage:
        return self.messages.get(timeout=timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait for a condition on broker state that has no event of its own (counters); bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            threading.Event().wait(0.01)
        return predicate()

    def close(self) -> list[str]:
        """Stop the broker and its loop; return the names of tasks left behind (there must be none)."""

        async def stop_and_list() -> list[str]:
            await self.broker.stop()
            return [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        try:
            leftovers: list[str] = self.call(stop_and_list(), timeout=15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            if not self.thread.is_alive():
                self.loop.close()
        return leftovers


@contextmanager
def broker_harnesses(pki: Pki, authorizer: Any) -> Iterator[Callable[..., BrokerHarness]]:
    """A factory of started brokers (keyword overrides for EmbeddedBroker); all stopped at the end, and a
    broker whose stop() leaves a task behind fails the test."""
    started: list[BrokerHarness] = []

    def start(**overrides: Any) -> BrokerHarness:
        kwargs: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "tls": pki.tls,
            "limits": BrokerLimits(),
            "authorizer": authorizer,
        }
        kwargs.update(overrides)
        harness = BrokerHarness(kwargs)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        leftovers = harness.close()
        if leftovers:
            raise AssertionError(f"broker.stop() left tasks running: {leftovers}")
