"""UDP probes where a reply is expected: SSDP (1900, UPnP discovery), mDNS (5353, unicast query) and CoAP
(5683, GET /.well-known/core). A port counts as open only when it answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from thingward.audit.scanner.wire import printable


@dataclass(frozen=True)
class UdpProbe:
    port: int
    service: str
    payload: Callable[[str], bytes]
    looks_right: Callable[[bytes], bool]


def _ssdp_search(host: str) -> bytes:
    return (
        b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n'
        b"USER-AGENT: thingward-scan\r\n\r\n"
    )


def _mdns_query(host: str) -> bytes:
    # One PTR question for _services._dns-sd._udp.local; sent from a port other than 5353, so the responder
    # answers us directly (RFC 6762 section 6.7, legacy unicast).
    header = os.urandom(2) + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    name = b"".join(len(label).to_bytes(1, "big") + label for label in (b"_services", b"_dns-sd", b"_udp", b"local"))
    return header + name + b"\x00" + b"\x00\x0c\x00\x01"


def _coap_get(host: str) -> bytes:
    # CON GET, message id random, token none, Uri-Path ".well-known" / "core"
    return b"\x40\x01" + os.urandom(2) + b"\xbb.well-known\x04core"


PROBES = (
    UdpProbe(1900, "ssdp", _ssdp_search, lambda r: r.startswith(b"HTTP/1.1 200") or b"ST:" in r.upper()),
    UdpProbe(5353, "mdns", _mdns_query, lambda r: len(r) >= 12 and bool(r[2] & 0x80)),
    UdpProbe(5683, "coap", _coap_get, lambda r: len(r) >= 4 and r[0] >> 6 == 1),
)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.reply.done():
            self.reply.set_result(data[:4096])

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_result(b"")  # ICMP port unreachable: closed


async def udp_probe(host: str, probe: UdpProbe, timeout: float) -> bytes | None:
    """The reply if the probe got one that looks like the protocol, else None."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_datagram_endpoint(_Reply, remote_addr=(host, probe.port))
    except OSError:
        return None
    try:
        transport.sendto(probe.payload(host))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                reply = await protocol.reply
                return reply if reply and probe.looks_right(reply) else None
        return None
    finally:
        transport.close()


def udp_banner(service: str, reply: bytes) -> str:
    if service == "ssdp":
        for line in reply.split(b"\r\n"):
            if line.lower().startswith(b"server:"):
                return printable(line.split(b":", 1)[1])
        return printable(reply.split(b"\r\n", 1)[0])
    return f"{service} reply, {len(reply)} bytes"
