"""Each probe against a real peer on loopback: HTTP digest, RTSP digest, MQTT pairs (mosquitto), TLS
versions and certificates, SSDP over UDP, the connect scan's bounds (timeouts, rate). Named after what
they find or refuse."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thingward.audit.scanner import Credential, LoginPolicy, ScanOptions, run_scan
from thingward.audit.scanner.connect import connect_scan
from thingward.audit.scanner.logins import RateLimiter, find_default_login
from thingward.audit.scanner.tls import check_tls
from thingward.audit.scanner.udp import PROBES, udp_probe

LOOPBACK = ipaddress.ip_address("127.0.0.1")
WRONG = (Credential("root", "xc3511"), Credential("admin", "admin"), Credential("root", ""))


def _scan(port: int, pairs: tuple[Credential, ...], max_attempts: int = 10):
    options = ScanOptions(
        ports=(port,),
        udp=False,
        banner_wait=0.3,
        probe_timeout=1.5,
        credentials=pairs,
        logins=LoginPolicy(max_attempts=max_attempts, rate=50, timeout=2.0),
    )
    report = asyncio.run(run_scan([LOOPBACK], options))
    (host,) = report.hosts
    (result,) = host.ports
    return report, result


def test_http_digest_default_login_is_found(digest_web_server: tuple[int, tuple[str, str]]) -> None:
    port, login = digest_web_server
    _, result = _scan(port, (*WRONG, Credential(*login)))
    assert result.service == "http"
    assert [(w.service, w.username, w.password) for w in result.weak_credentials] == [("http", *login)]


def test_http_digest_without_a_listed_pair_reports_nothing(digest_web_server: tuple[int, tuple[str, str]]) -> None:
    port, _ = digest_web_server
    report, result = _scan(port, WRONG)
    assert result.weak_credentials == ()
    assert report.login_attempts == len(WRONG)


def test_rtsp_digest_default_login_is_found(rtsp_server: tuple[int, tuple[str, str]]) -> None:
    port, login = rtsp_server
    _, result = _scan(port, (*WRONG, Credential(*login)))
    assert result.service == "rtsp"
    assert [(w.service, w.username, w.password) for w in result.weak_credentials] == [("rtsp", *login)]


def test_attempts_per_service_are_bounded(rtsp_server: tuple[int, tuple[str, str]]) -> None:
    port, login = rtsp_server
    pairs = (*WRONG, *(Credential("user", f"guess{i}") for i in range(20)), Credential(*login))
    report, result = _scan(port, pairs, max_attempts=5)
    assert result.weak_credentials == ()  # the right pair was beyond the budget
    assert report.login_attempts == 5


@pytest.fixture
def mqtt_with_a_default_user(tmp_path: Path) -> Iterator[int]:
    """mosquitto on loopback: no anonymous access, one user whose password is a default."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "admin", "admin1234"], check=True, timeout=30)
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\npersistence false\n"
        "log_dest stderr\nuser root\n"
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def test_mqtt_default_pair_is_found_where_anonymous_is_refused(mqtt_with_a_default_user: int) -> None:
    _, result = _scan(mqtt_with_a_default_user, (*WRONG, Credential("admin", "admin1234")))
    assert result.service == "mqtt"
    assert [(w.username, w.password, w.anonymous) for w in result.weak_credentials] == [("admin", "admin1234", False)]
    assert "CONNACK code 5 without credentials" in result.notes


def test_tls_check_sees_old_versions_and_an_expired_self_signed_certificate(old_tls_server: int) -> None:
    tls = asyncio.run(check_tls("127.0.0.1", old_tls_server, timeout=3))
    assert tls is not None
    assert tls.self_signed and tls.expired
    assert {"TLSv1.2", "TLSv1.3"} <= set(tls.versions)
    assert tls.old_versions  # TLS 1.0 and/or 1.1, as far as this OpenSSL still speaks them
    assert tls.subject == "CN=lab camera"


def test_a_plaintext_port_is_not_tls(rtsp_server: tuple[int, tuple[str, str]]) -> None:
    assert asyncio.run(check_tls("127.0.0.1", rtsp_server[0], timeout=2)) is None


def test_ssdp_reply_is_recognised_and_silence_is_not(ssdp_responder: int) -> None:
    ssdp = dataclasses.replace(PROBES[0], port=ssdp_responder)
    reply = asyncio.run(udp_probe("127.0.0.1", ssdp, timeout=2))
    assert reply is not None and b"UPnP/1.0" in reply
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        nothing_there = dataclasses.replace(PROBES[0], port=closed.getsockname()[1])
    assert asyncio.run(udp_probe("127.0.0.1", nothing_there, timeout=0.5)) is None


def test_connect_scan_reports_exactly_the_listening_ports() -> None:
    listeners = [socket.socket() for _ in range(3)]
    try:
        for listener in listeners:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
        ports = sorted(listener.getsockname()[1] for listener in listeners)
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            closed = gone.getsockname()[1]
        result = asyncio.run(connect_scan([LOOPBACK], [*ports, closed], concurrency=2))
        assert result.open == {LOOPBACK: set(ports)}
        assert result.answered == {LOOPBACK} and result.probes == 4 and result.timeouts == 0
    finally:
        for listener in listeners:
            listener.close()


def test_a_connect_that_gets_no_answer_is_given_up_at_the_timeout() -> None:
    # A listener with a full accept queue drops new SYNs: the connect hangs, as to a filtered port.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            time.sleep(0.1)
            started = time.monotonic()
            result = asyncio.run(connect_scan([LOOPBACK], [port], timeout=0.3))
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert result.open == {} and result.timeouts == 1
    assert 0.25 <= elapsed < 2


def test_connect_rate_limit_is_kept() -> None:
    started = time.monotonic()
    result = asyncio.run(connect_scan([LOOPBACK], range(40000, 40100), rate=200))
    elapsed = time.monotonic() - started
    assert result.probes == 100
    assert elapsed >= 99 / 200 * 0.9


def test_login_rate_limit_is_kept_across_services() -> None:
    limiter = RateLimiter(20)
    calls: list[float] = []

    async def never(pair: Credential) -> bool:
        calls.append(time.monotonic())
        return False

    async def two_services() -> None:
        pairs = tuple(Credential("u", str(i)) for i in range(10))
        policy = LoginPolicy(max_attempts=10, parallel=4, rate=20)
        await asyncio.gather(*(find_default_login(never, pairs, policy, limiter) for _ in range(2)))

    asyncio.run(two_services())
    assert len(calls) == 20
    assert calls[-1] - calls[0] >= 19 / 20 * 0.9


def test_a_socket_that_connected_to_itself_is_not_an_open_port() -> None:
    from thingward.audit.scanner.connect import _connected_to_itself

    with socket.socket() as itself, socket.socket() as listener:
        itself.bind(("127.0.0.1", 0))
        itself.connect(itself.getsockname())  # TCP simultaneous open with itself: what a scan can hit by chance
        assert _connected_to_itself(itself)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as real:
            assert not _connected_to_itself(real)


def test_connect_scan_over_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError as e:
            pytest.skip(f"::1 is not usable here: {e}")
        listener.listen(4)
        port = listener.getsockname()[1]
        loopback6 = ipaddress.ip_address("::1")
        result = asyncio.run(connect_scan([loopback6], [port, port + 1 if port < 65535 else port - 1]))
    assert result.open == {loopback6: {port}}


@pytest.fixture
def udp_responder() -> Iterator[Callable[[Callable[[bytes], bytes]], int]]:
    """Starts UDP servers on free loopback ports that answer each datagram with answer(datagram)."""
    import threading

    sockets: list[socket.socket] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(answer: Callable[[bytes], bytes]) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        sockets.append(sock)

        def serve() -> None:
            while not stop.is_set():
                try:
                    data, peer = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                sock.sendto(answer(data), peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return sock.getsockname()[1]

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    for sock in sockets:
        sock.close()


def test_mdns_and_coap_replies_are_recognised_and_garbage_is_not(udp_responder) -> None:
    mdns_port = udp_responder(lambda query: query[:2] + b"\x84\x00" + query[4:])  # the query echoed as a response
    coap_port = udp_responder(lambda request: b"\x60\x45" + request[2:4] + b"\xff</sensors>")  # ACK 2.05 Content
    garbage_port = udp_responder(lambda _: b"\x00\x00")
    mdns, coap = PROBES[1], PROBES[2]
    assert (mdns.service, coap.service) == ("mdns", "coap")
    assert asyncio.run(udp_probe("127.0.0.1", dataclasses.replace(mdns, port=mdns_port), 2)) is not None
    assert asyncio.run(udp_probe("127.0.0.1", dataclasses.replace(coap, port=coap_port), 2)) is not None
    for probe in (mdns, coap):
        assert asyncio.run(udp_probe("127.0.0.1", dataclasses.replace(probe, port=garbage_port), 1)) is None
