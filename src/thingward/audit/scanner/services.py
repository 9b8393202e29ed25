"""Service identification of an open TCP port: the banner it sends unasked, then small probes (MQTT
CONNECT, HTTP GET, RTSP OPTIONS, a TLS handshake), at most a handful of connections per port."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass

from thingward.audit.scanner.model import TlsInfo
from thingward.audit.scanner.tls import check_tls
from thingward.audit.scanner.wire import (
    IAC,
    client_tls_context,
    exchange,
    mqtt_connack_code,
    mqtt_connect,
    printable,
    talk,
    telnet_strip,
)

TLS_PORTS = frozenset({443, 322, 5684, 8443, 8883, 8884, 9443, 55443})
HTTP_PORTS = frozenset({80, 81, 82, 88, 5000, 8000, 8001, 8008, 8080, 8081, 8083, 8088, 8123, 8888, 9000, 49152})
RTSP_PORTS = frozenset({554, 8554, 10554})
MQTT_PORTS = frozenset({1883, 1884})


@dataclass(frozen=True)
class Identified:
    service: str
    banner: str = ""
    tls: TlsInfo | None = None
    notes: tuple[str, ...] = ()
    mqtt_anonymous: bool = False  # the CONNECT probe without credentials was accepted


def _http_request(host: str) -> bytes:
    return f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: thingward-scan\r\nConnection: close\r\n\r\n".encode()


def _rtsp_request(host: str, port: int) -> bytes:
    return f"OPTIONS rtsp://{host}:{port}/ RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: thingward-scan\r\n\r\n".encode()


def _header(reply: bytes, name: str) -> str:
    for line in reply.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name.encode():
            return printable(value)
    return ""


async def _application_probes(
    host: str, port: int, timeout: float, tls: ssl.SSLContext | None, order: list[str]
) -> Identified | None:
    """Speak MQTT, HTTP and RTSP in the given order; the first that answers in kind names the service."""
    suffix = "s" if tls is not None else ""
    for protocol in order:
        if protocol == "mqtt":
            reply = await exchange(host, port, mqtt_connect(), timeout, tls)
            code = mqtt_connack_code(reply or b"")
            if code is not None:
                anonymous = code == 0
                note = (
                    "accepts clients without credentials" if anonymous else f"CONNACK code {code} without credentials"
                )
                return Identified(
                    f"mqtt{suffix}", f"MQTT 3.1.1 CONNACK {code}", notes=(note,), mqtt_anonymous=anonymous
                )
        elif protocol == "http":
            answer = await talk(host, port, _http_request(host), timeout, tls)
            if answer.silent and tls is None:
                # MQTT brokers and TLS servers hang up on an HTTP request and RTSP servers answer it: a
                # service that keeps silent will not speak to the other probes either.
                return Identified("unknown", notes=("kept silent to an HTTP request; not probed further",))
            reply = answer.data
            if reply.startswith(b"RTSP/"):  # an RTSP server answering our HTTP request in its own protocol
                status = printable(reply.split(b"\r\n", 1)[0])
                return Identified(f"rtsp{suffix}", status)
            if reply.startswith(b"HTTP/"):
                status = printable(reply.split(b"\r\n", 1)[0])
                server = _header(reply, "server")
                service = "upnp" if "upnp" in server.lower() else f"http{suffix}"
                return Identified(service, f"{status}; Server: {server}" if server else status)
        elif protocol == "rtsp":
            reply = await exchange(host, port, _rtsp_request(host, port), timeout, tls) or b""
            if reply.startswith(b"RTSP/"):
                server = _header(reply, "server")
                status = printable(reply.split(b"\r\n", 1)[0])
                return Identified(f"rtsp{suffix}", f"{status}; Server: {server}" if server else status)
    return None


def _probe_order(port: int) -> list[str]:
    if port in MQTT_PORTS:
        return ["mqtt", "http", "rtsp"]
    if port in RTSP_PORTS:
        return ["rtsp", "http", "mqtt"]
    return ["http", "rtsp", "mqtt"]


async def identify(host: str, port: int, timeout: float, banner_wait: float) -> Identified:
    """What listens on host:port, with the TLS facts when it speaks TLS."""
    tls_first = port in TLS_PORTS
    if not tls_first:
        greeting = await exchange(host, port, None, banner_wait)
        if greeting is None:
            return Identified("unknown", notes=("closed again before identification",))
        if greeting:
            return _from_banner(greeting)
        # Plaintext probes first: a TLS server answers a plaintext request at once (an alert or a close),
        # while a plaintext server may wait out the whole timeout on a ClientHello.
        found = await _application_probes(host, port, timeout, None, _probe_order(port))
        if found is not None:
            return found
    tls = await check_tls(host, port, timeout)
    if tls is not None:
        order = ["mqtt", "http", "rtsp"] if port in (8883, 8884) else _probe_order(port)
        found = await _application_probes(host, port, timeout, client_tls_context(), order)
        if found is None:
            return Identified("tls", tls=tls)
        return Identified(found.service, found.banner, tls, found.notes, found.mqtt_anonymous)
    if not tls_first:
        return Identified("unknown")
    greeting = await exchange(host, port, None, banner_wait)
    if greeting:
        return _from_banner(greeting)
    found = await _application_probes(host, port, timeout, None, _probe_order(port))
    return found or Identified("unknown")


PROVISIONING_SERVICE = "thingward-provisioning"


def _provisioning(greeting: bytes) -> Identified | None:
    """A device's open onboarding window: its provisioning service sends a length-prefixed JSON info frame
    (model, id, protocol versions) to whoever connects. Only that frame is read; nothing is tried."""
    if len(greeting) < 6 or greeting[4:5] != b"{":
        return None
    length = int.from_bytes(greeting[:4], "big")
    try:
        info = json.loads(greeting[4 : 4 + length])
    except ValueError:
        return None
    if not isinstance(info, dict) or info.get("protocol") != PROVISIONING_SERVICE:
        return None
    model, device, versions = (printable(str(info.get(k, "?")).encode()) for k in ("model", "device_id", "versions"))
    return Identified(
        PROVISIONING_SERVICE,
        f"device {device}, model {model}, protocol versions {versions}",
        notes=("an onboarding window is open: it should close within minutes of power-on or a button press",),
    )


def _from_banner(greeting: bytes) -> Identified:
    provisioning = _provisioning(greeting)
    if provisioning is not None:
        return provisioning
    if greeting.startswith(b"SSH-"):
        return Identified("ssh", printable(greeting.split(b"\n", 1)[0]))
    text, _ = telnet_strip(greeting)
    if greeting[0] == IAC or b"login" in text.lower():
        return Identified("telnet", printable(text) or "telnet option negotiation")
    if greeting.startswith(b"220"):
        return Identified("ftp", printable(greeting.split(b"\n", 1)[0]))
    return Identified("unknown", printable(greeting))


SERVICE_CREDENTIAL_PROBES = frozenset({"telnet", "ssh", "http", "https", "upnp", "mqtt", "mqtts", "rtsp", "rtsps"})
"""The services whose default logins `logins.py` knows how to try."""

__all__ = ["SERVICE_CREDENTIAL_PROBES", "Identified", "identify"]
