"""Default-credential probes: Telnet login dialogue, SSH (asyncssh), HTTP basic and digest, MQTT
(anonymous, then pairs), RTSP. Each service gets a bounded number of attempts, a few at a time, all of them
under one rate limit; the first pair that works ends the service's probe."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from thingward.audit.scanner.credentials import Credential
from thingward.audit.scanner.wire import (
    client_tls_context,
    close_quietly,
    digest_authorization,
    exchange,
    mqtt_connack_code,
    mqtt_connect,
    parse_challenge,
    read_some,
    telnet_strip,
)

logger = logging.getLogger(__name__)

Attempt = Callable[[Credential], Awaitable[bool]]


class Inconclusive(Exception):
    """The service did not answer in a way that tells success from failure (gone, timed out, garbled)."""


@dataclass(frozen=True)
class LoginPolicy:
    max_attempts: int = 20  # per service (host and port)
    parallel: int = 4  # attempts in flight per service
    rate: float = 10.0  # attempts per second, over the whole scan
    timeout: float = 3.0  # seconds, per attempt
    max_inconclusive: int = 3  # give up on a service after this many unanswerable attempts


class RateLimiter:
    """Spaces events at least 1/rate seconds apart, across every task that shares it."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


@dataclass
class LoginOutcome:
    found: Credential | None = None
    attempts: int = 0
    gave_up: str = ""


async def find_default_login(
    attempt: Attempt, credentials: Sequence[Credential], policy: LoginPolicy, limiter: RateLimiter
) -> LoginOutcome:
    """Try pairs from the top of the list, `parallel` at a time, until one works or the budget is spent."""
    outcome = LoginOutcome()
    queue = list(credentials[: policy.max_attempts])
    inconclusive = 0
    stop = asyncio.Event()

    async def worker() -> None:
        nonlocal inconclusive
        while queue and not stop.is_set():
            pair = queue.pop(0)
            await limiter.wait()
            if stop.is_set():
                return
            outcome.attempts += 1
            try:
                async with asyncio.timeout(policy.timeout * 3):
                    worked = await attempt(pair)
            except (Inconclusive, TimeoutError) as e:
                inconclusive += 1
                if inconclusive >= policy.max_inconclusive:
                    outcome.gave_up = f"stopped after {inconclusive} attempts without a clear answer ({e or 'timeout'})"
                    stop.set()
                continue
            if worked:
                if outcome.found is None:
                    outcome.found = pair
                stop.set()

    await asyncio.gather(*(worker() for _ in range(max(1, policy.parallel))))
    return outcome


# --- Telnet -----------------------------------------------------------------------------------------

_LOGIN_PROMPT = re.compile(rb"(login|user ?name|user)\s*:\s*$", re.IGNORECASE)
_PASSWORD_PROMPT = re.compile(rb"password\s*:\s*$", re.IGNORECASE)
_SHELL_PROMPT = re.compile(rb"[$#>%]\s*$")
_FAILED = re.compile(rb"incorrect|invalid|failed|denied|bad password|login:\s*$", re.IGNORECASE)


class _TelnetDialogue:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.text = b""

    async def wait_for(self, *patterns: re.Pattern[bytes]) -> int | None:
        """Read until one of the patterns matches the text since the last send; its index, or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while loop.time() < deadline and len(self.text) < 16384:
            for index, pattern in enumerate(patterns):
                if pattern.search(self.text.rstrip(b"\x00")):
                    return index
            chunk = await read_some(self.reader, deadline - loop.time())
            if not chunk:
                return None
            text, replies = telnet_strip(chunk)
            if replies:
                self.writer.write(replies)
            self.text += text
        return None

    async def send_line(self, line: str) -> None:
        self.text = b""
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()


async def try_telnet(host: str, port: int, pair: Credential, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as e:
        raise Inconclusive(f"cannot connect: {e}") from None
    dialogue = _TelnetDialogue(reader, writer, timeout)
    try:
        first = await dialogue.wait_for(_LOGIN_PROMPT, _PASSWORD_PROMPT)
        if first is None:
            raise Inconclusive("no login prompt")
        if first == 0:
            await dialogue.send_line(pair.username)
            if await dialogue.wait_for(_PASSWORD_PROMPT) is None:
                raise Inconclusive("no password prompt")
        await dialogue.send_line(pair.password)
        # A shell prompt comes quickly after a good password; a bad one is answered slowly (login's delay)
        # or not at all within the timeout: both are failures.
        verdict = await dialogue.wait_for(_FAILED, _SHELL_PROMPT)
        if verdict == 1:
            with contextlib.suppress(OSError):
                await dialogue.send_line("exit")
            return True
        return False
    except OSError as e:
        raise Inconclusive(str(e)) from None
    finally:
        await close_quietly(writer)


# --- SSH --------------------------------------------------------------------------------------------


async def try_ssh(host: str, port: int, pair: Credential, timeout: float) -> bool:
    import asyncssh  # imported here: it takes a second, and every thingward command would pay it

    # asyncssh logs every connection at INFO; a scan makes dozens, and the outcome is in the report.
    ssh_logger = logging.getLogger("asyncssh")
    if ssh_logger.level == logging.NOTSET:
        ssh_logger.setLevel(logging.WARNING)
    try:
        connection = await asyncssh.connect(
            host,
            port,
            username=pair.username,
            password=pair.password,
            known_hosts=None,  # we judge the login, not the host key
            client_keys=None,
            agent_path=None,
            config=None,
            preferred_auth=("password", "keyboard-interactive"),
            connect_timeout=timeout,
            login_timeout=timeout,
        )
    except asyncssh.PermissionDenied:
        return False
    except (asyncssh.Error, OSError, TimeoutError) as e:
        raise Inconclusive(f"ssh: {e}") from None
    connection.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            await connection.wait_closed()
    return True


# --- MQTT -------------------------------------------------------------------------------------------


async def mqtt_accepts(
    host: str, port: int, username: str | None, password: str | None, timeout: float, tls: bool
) -> bool:
    reply = await exchange(host, port, mqtt_connect(username, password), timeout, client_tls_context() if tls else None)
    code = mqtt_connack_code(reply or b"")
    if code is None:
        raise Inconclusive("no CONNACK")
    return code == 0


# --- HTTP basic/digest ------------------------------------------------------------------------------


async def http_challenge(url: str, timeout: float) -> str | None:
    """The WWW-Authenticate scheme ("basic" or "digest") if / asks for a login, else None."""
    async with httpx.AsyncClient(verify=client_tls_context(), timeout=timeout) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return None
    if response.status_code != 401:
        return None
    scheme, _ = parse_challenge(response.headers.get("www-authenticate", ""))
    return scheme if scheme in ("basic", "digest") else None


async def try_http(url: str, scheme: str, pair: Credential, timeout: float) -> bool:
    auth: httpx.Auth = (
        httpx.DigestAuth(pair.username, pair.password)
        if scheme == "digest"
        else httpx.BasicAuth(pair.username, pair.password)
    )
    async with httpx.AsyncClient(verify=client_tls_context(), timeout=timeout) as client:
        try:
            response = await client.get(url, auth=auth)
        except httpx.HTTPError as e:
            raise Inconclusive(f"http: {e}") from None
    return response.status_code < 400


# --- RTSP -------------------------------------------------------------------------------------------


async def _rtsp_describe(host: str, port: int, authorization: str, timeout: float, tls: bool) -> tuple[int, str]:
    uri = f"rtsp://{host}:{port}/"
    header = f"Authorization: {authorization}\r\n" if authorization else ""
    request = f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n{header}\r\n".encode()
    reply = await exchange(host, port, request, timeout, client_tls_context() if tls else None) or b""
    match = re.match(rb"RTSP/1\.\d (\d{3})", reply)
    if match is None:
        raise Inconclusive("no RTSP reply")
    challenge = ""
    for line in reply.split(b"\r\n"):
        if line.lower().startswith(b"www-authenticate:"):
            challenge = line.split(b":", 1)[1].decode("latin-1").strip()
            if challenge.lower().startswith("digest"):
                break
    return int(match.group(1)), challenge


async def rtsp_challenge(host: str, port: int, timeout: float, tls: bool) -> str | None:
    try:
        status, challenge = await _rtsp_describe(host, port, "", timeout, tls)
    except Inconclusive:
        return None
    return challenge if status == 401 and challenge else None


async def try_rtsp(host: str, port: int, challenge: str, pair: Credential, timeout: float, tls: bool) -> bool:
    scheme, params = parse_challenge(challenge)
    if scheme == "digest":
        authorization = digest_authorization("DESCRIBE", f"rtsp://{host}:{port}/", pair.username, pair.password, params)
    else:
        token = base64.b64encode(f"{pair.username}:{pair.password}".encode()).decode()
        authorization = f"Basic {token}"
    status, _ = await _rtsp_describe(host, port, authorization, timeout, tls)
    return status < 400
