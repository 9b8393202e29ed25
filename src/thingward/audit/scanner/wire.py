"""Small protocol pieces the probes share: one bounded exchange over TCP (optionally TLS), MQTT CONNECT,
telnet option refusal, and HTTP/RTSP digest answers. Everything here has a deadline and a size bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import ssl
import warnings
from dataclasses import dataclass

READ_LIMIT = 4096  # bytes kept from any one reply


def client_tls_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A TLS client that accepts any certificate (we inspect it, not trust it); pinned to `version` if given.

    To tell whether a server still accepts TLS 1.0/1.1 the context must offer them, so old versions lower
    OpenSSL's security level for that probe only.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # asking about TLS 1.0 is the point
            context.minimum_version = version
            context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("ALL:@SECLEVEL=0")
    return context


async def close_quietly(writer: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        async with asyncio.timeout(timeout):
            await writer.wait_closed()


async def read_some(reader: asyncio.StreamReader, timeout: float, until: bytes | None = None) -> bytes:
    """Read what arrives within `timeout` (up to READ_LIMIT); with `until`, stop as soon as it is seen."""
    data, _ = await _read(reader, timeout, until)
    return data


async def _read(reader: asyncio.StreamReader, timeout: float, until: bytes | None) -> tuple[bytes, bool]:
    """(data, whether the deadline passed with the connection still open)."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while len(data) < READ_LIMIT:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return data, True
            async with asyncio.timeout(remaining):
                chunk = await reader.read(READ_LIMIT - len(data))
            if not chunk:
                return data, False
            data += chunk
            if until is None or until in data:
                return data, False
    except TimeoutError:
        return data, True
    except (OSError, ssl.SSLError):
        return data, False
    return data, False


@dataclass(frozen=True)
class Reply:
    data: bytes
    connected: bool  # False: no connection at all
    silent: bool  # True: connected, nothing came back, and the peer kept the connection open to the end


async def talk(host: str, port: int, payload: bytes | None, timeout: float, tls: ssl.SSLContext | None = None) -> Reply:
    """Connect, send `payload` (if any), and read the first reply within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname="" if tls else None)
    except (OSError, TimeoutError, ssl.SSLError, EOFError):
        return Reply(b"", connected=False, silent=False)
    try:
        if payload:
            writer.write(payload)
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.drain()
        data, open_at_deadline = await _read(reader, timeout, None)
        return Reply(data, connected=True, silent=not data and open_at_deadline)
    finally:
        await close_quietly(writer)


async def exchange(
    host: str, port: int, payload: bytes | None, timeout: float, tls: ssl.SSLContext | None = None
) -> bytes | None:
    """Connect, send `payload` (if any), return the first reply (b"" if none in time); None if no connection."""
    reply = await talk(host, port, payload, timeout, tls)
    return reply.data if reply.connected else None


# --- MQTT 3.1.1 -------------------------------------------------------------------------------------


def _mqtt_string(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect(username: str | None = None, password: str | None = None) -> bytes:
    """CONNECT with a random client id and clean session; credentials only when given."""
    flags = 0x02
    payload = _mqtt_string(f"thingward-scan-{os.urandom(4).hex()}")
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


MQTT_DISCONNECT = b"\xe0\x00"


def mqtt_connack_code(reply: bytes) -> int | None:
    """The CONNACK return code (0 accepted, 4 bad credentials, 5 not authorised), None if not a CONNACK."""
    if len(reply) >= 4 and reply[0] == 0x20 and reply[1] == 2:
        return reply[3]
    return None


# --- Telnet -----------------------------------------------------------------------------------------

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
_ECHO, _SUPPRESS_GO_AHEAD = 1, 3


def telnet_strip(data: bytes) -> tuple[bytes, bytes]:
    """Split raw telnet bytes into (text, our replies): we let the server echo and suppress go-ahead, and
    refuse every other option."""
    text, replies = bytearray(), bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte != IAC:
            text.append(byte)
            i += 1
            continue
        command = data[i + 1] if i + 1 < len(data) else None
        if command in (DO, DONT, WILL, WONT) and i + 2 < len(data):
            option = data[i + 2]
            if command == DO:
                replies += bytes([IAC, WONT, option])
            elif command == WILL:
                replies += bytes([IAC, DO if option in (_ECHO, _SUPPRESS_GO_AHEAD) else DONT, option])
            i += 3
        elif command == SB:
            end = data.find(bytes([IAC, SE]), i)
            i = len(data) if end < 0 else end + 2
        elif command == IAC:
            text.append(IAC)
            i += 2
        else:
            i += 2
    return bytes(text), bytes(replies)


def printable(data: bytes, limit: int = 200) -> str:
    """A banner for humans: decoded leniently, control characters dropped, whitespace squeezed."""
    text = data.decode("utf-8", "replace")
    text = re.sub(r"[^\x20-\x7e\u00a0-\uffff]+", " ", text)
    return " ".join(text.split())[:limit]


# --- HTTP/RTSP digest (RFC 2617, MD5) ----------------------------------------------------------------


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Digest realm="x", nonce="y"` -> ("digest", {"realm": "x", "nonce": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


def digest_authorization(method: str, uri: str, username: str, password: str, params: dict[str, str]) -> str:
    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    ha1 = md5(f"{username}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    if "auth" in params.get("qop", "").split(","):
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        extra = f', qop=auth, nc=00000001, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
        extra = ""
    return f'Digest username="{username}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{response}"{extra}'
