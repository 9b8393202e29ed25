"""One scan from start to end: connect scan, service identification, TLS checks, UDP probes and (when
asked) default-credential probes, each stage bounded, into a `ScanReport`."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from thingward.audit.scanner.connect import ProgressCallback, connect_scan
from thingward.audit.scanner.credentials import Credential
from thingward.audit.scanner.logins import (
    Attempt,
    LoginOutcome,
    LoginPolicy,
    RateLimiter,
    find_default_login,
    http_challenge,
    mqtt_accepts,
    rtsp_challenge,
    try_http,
    try_rtsp,
    try_ssh,
    try_telnet,
)
from thingward.audit.scanner.model import HostResult, PortResult, ScanReport, WeakCredential
from thingward.audit.scanner.services import Identified, identify
from thingward.audit.scanner.targets import IPAddress
from thingward.audit.scanner.udp import PROBES, udp_banner, udp_probe

logger = logging.getLogger(__name__)

StageCallback = Callable[[str], None]


@dataclass(frozen=True)
class ScanOptions:
    ports: tuple[int, ...]
    concurrency: int = 1000  # TCP connects in flight
    connect_timeout: float = 1.0  # seconds per connect
    connect_rate: float = 0.0  # new connects per second; 0: bounded by concurrency only
    probe_timeout: float = 3.0  # seconds per identification probe
    banner_wait: float = 1.0  # seconds to wait for a banner sent unasked
    identify_parallel: int = 32  # open ports identified at once
    udp: bool = True  # SSDP, mDNS and CoAP probes
    credentials: tuple[Credential, ...] = ()  # empty: no login attempts at all
    logins: LoginPolicy = field(default_factory=LoginPolicy)


async def _login_probe(
    host: str, port: int, found: Identified, options: ScanOptions, limiter: RateLimiter
) -> tuple[tuple[WeakCredential, ...], int, str]:
    """(weak credentials, attempts used, note) for one identified service."""
    policy, timeout = options.logins, options.logins.timeout
    service = found.service
    attempt: Attempt | None = None
    if service == "telnet":
        attempt = functools.partial(try_telnet, host, port, timeout=timeout)
    elif service == "ssh":
        attempt = functools.partial(try_ssh, host, port, timeout=timeout)
    elif service in ("mqtt", "mqtts"):
        if found.mqtt_anonymous:
            return (WeakCredential(service, "", "", anonymous=True),), 0, ""
        tls = service == "mqtts"

        async def mqtt_attempt(pair: Credential) -> bool:
            return await mqtt_accepts(host, port, pair.username, pair.password, timeout, tls)

        attempt = mqtt_attempt
    elif service in ("http", "https", "upnp"):
        scheme = "https" if found.tls is not None else "http"
        url = f"{scheme}://{host}:{port}/"
        challenge = await http_challenge(url, timeout)
        if challenge is None:
            return (), 0, "no login asked for at /"

        async def http_attempt(pair: Credential) -> bool:
            return await try_http(url, challenge, pair, timeout)

        attempt = http_attempt
    elif service in ("rtsp", "rtsps"):
        tls = service == "rtsps"
        rtsp_auth = await rtsp_challenge(host, port, timeout, tls)
        if rtsp_auth is None:
            return (), 0, "no login asked for by DESCRIBE"

        async def rtsp_attempt(pair: Credential) -> bool:
            return await try_rtsp(host, port, rtsp_auth, pair, timeout, tls)

        attempt = rtsp_attempt
    if attempt is None:
        return (), 0, ""
    outcome: LoginOutcome = await find_default_login(attempt, options.credentials, policy, limiter)
    if outcome.found is None:
        note = outcome.gave_up or f"no default login among {outcome.attempts} tried"
        return (), outcome.attempts, note
    pair = outcome.found
    return (WeakCredential(service, pair.username, pair.password),), outcome.attempts, ""


async def run_scan(
    addresses: Sequence[IPAddress],
    options: ScanOptions,
    progress: ProgressCallback | None = None,
    stage: StageCallback | None = None,
) -> ScanReport:
    started_at, started = dt.datetime.now(dt.UTC), time.monotonic()

    def say(text: str) -> None:
        logger.debug("scan: %s", text)
        if stage is not None:
            stage(text)

    say(f"connect scan of {len(options.ports)} port(s) on {len(addresses)} host(s)")
    connect = await connect_scan(
        addresses,
        options.ports,
        concurrency=options.concurrency,
        timeout=options.connect_timeout,
        rate=options.connect_rate,
        progress=progress,
    )
    open_ports = [(str(a), p) for a in addresses for p in sorted(connect.open.get(a, ()))]

    say(f"identifying {len(open_ports)} open port(s)")
    semaphore = asyncio.Semaphore(max(1, options.identify_parallel))

    async def identify_one(host: str, port: int) -> Identified:
        async with semaphore:
            return await identify(host, port, options.probe_timeout, options.banner_wait)

    identified = await asyncio.gather(*(identify_one(h, p) for h, p in open_ports))

    udp_found: dict[str, list[PortResult]] = {}
    if options.udp:
        say("UDP probes: SSDP, mDNS, CoAP")
        udp_jobs = [(str(a), probe) for a in addresses for probe in PROBES]

        async def udp_one(host: str, index: int) -> bytes | None:
            async with semaphore:
                return await udp_probe(host, PROBES[index], options.probe_timeout / 3)

        replies = await asyncio.gather(*(udp_one(h, PROBES.index(p)) for h, p in udp_jobs))
        for (host, probe), reply in zip(udp_jobs, replies, strict=True):
            if reply is not None:
                udp_found.setdefault(host, []).append(
                    PortResult(probe.port, "udp", probe.service, udp_banner(probe.service, reply))
                )

    attempts = 0
    logins: list[tuple[tuple[WeakCredential, ...], int, str]] = [((), 0, "")] * len(open_ports)
    if options.credentials:
        say("default-credential probes")
        limiter = RateLimiter(options.logins.rate)
        logins = list(
            await asyncio.gather(
                *(
                    _login_probe(h, p, found, options, limiter)
                    for (h, p), found in zip(open_ports, identified, strict=True)
                )
            )
        )
        attempts = sum(used for _, used, _ in logins)

    by_host: dict[str, list[PortResult]] = {}
    for (host, port), found, (weak, _, note) in zip(open_ports, identified, logins, strict=True):
        notes = found.notes + ((note,) if note else ())
        if found.mqtt_anonymous and not weak:  # seen by identification itself, with or without --credentials
            weak = (WeakCredential(found.service, "", "", anonymous=True),)
        by_host.setdefault(host, []).append(
            PortResult(port, "tcp", found.service, found.banner, found.tls, weak, notes)
        )
    hosts = []
    for address in addresses:
        name = str(address)
        ports = by_host.get(name, []) + udp_found.get(name, [])
        if ports or address in connect.answered:
            hosts.append(HostResult(name, tuple(ports)))
    return ScanReport(
        started_at=started_at,
        duration_s=time.monotonic() - started,
        targets=tuple(str(a) for a in addresses),
        ports_scanned=len(options.ports),
        credentials_checked=bool(options.credentials),
        login_attempts=attempts,
        hosts=tuple(hosts),
    )
