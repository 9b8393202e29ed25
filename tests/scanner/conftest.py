"""The home lab (camera, hub, clean host, scanner) in network namespaces, built once per test session and
torn down at its end, even when tests fail. In CI (CI=true) an unusable `ip netns` fails the lab tests; on
a laptop without root they are skipped with the reason."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import http.server
import os
import re
import socket
import socketserver
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab.netns import HomeLab, Lab, build_home_lab, netns_unusable_reason, remove_leftovers


@pytest.fixture(scope="session")
def home_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeLab]:
    reason = netns_unusable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the scanner lab needs network namespaces: {reason}")
        pytest.skip(f"the scanner lab needs network namespaces: {reason}")
    remove_leftovers()
    workdir = tmp_path_factory.mktemp("scanner-lab")
    with Lab(workdir) as lab:
        yield build_home_lab(lab)


# --- real peers on loopback, each on a free port, stopped at the end of its test ---------------------------


class _Threaded:
    """A socketserver in a daemon thread on 127.0.0.1, port chosen by the kernel."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])  # type: ignore[index]

    def __enter__(self) -> _Threaded:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_ok(header: str, method: str, users: dict[str, str], realm: str, nonce: str) -> bool:
    """Server side of RFC 2617 digest (MD5, qop=auth or none)."""
    if not header.lower().startswith("digest "):
        return False
    params = {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', header[7:])}
    password = users.get(params.get("username", ""))
    if password is None or params.get("nonce") != nonce:
        return False
    ha1 = _md5(f"{params['username']}:{realm}:{password}")
    ha2 = _md5(f"{method}:{params.get('uri', '')}")
    if params.get("qop") == "auth":
        expected = _md5(f"{ha1}:{nonce}:{params.get('nc')}:{params.get('cnonce')}:auth:{ha2}")
    else:
        expected = _md5(f"{ha1}:{nonce}:{ha2}")
    return hmac.compare_digest(expected, params.get("response", ""))


@pytest.fixture
def digest_web_server() -> Iterator[tuple[int, tuple[str, str]]]:
    """An HTTP server that wants a digest login (a camera web UI); yields its port and its login."""
    login = ("admin", "12345")
    realm, nonce = "camera", os.urandom(8).hex()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if digest_ok(self.headers.get("Authorization", ""), "GET", dict([login]), realm, nonce):
                body = b"welcome"
                self.send_response(200)
            else:
                body = b"login required"
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Digest realm="{realm}", nonce="{nonce}", qop="auth"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with _Threaded(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield server.port, login


@pytest.fixture
def rtsp_server() -> Iterator[tuple[int, tuple[str, str]]]:
    """An RTSP server (a camera stream) that wants a digest login for DESCRIBE."""
    login = ("admin", "888888")
    realm, nonce = "IP Camera", os.urandom(8).hex()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.connection.settimeout(5)
            lines = []
            while True:
                line = self.rfile.readline(4096).decode("latin-1")
                if line in ("\r\n", "\n", ""):
                    break
                lines.append(line.strip())
            if not lines:
                return
            method = lines[0].split(" ", 1)[0]
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            cseq = headers.get("cseq", "1")
            if method == "OPTIONS":
                reply = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nPublic: OPTIONS, DESCRIBE\r\nServer: lab-rtsp\r\n\r\n"
            elif digest_ok(headers.get("authorization", ""), method, dict([login]), realm, nonce):
                reply = f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
            else:
                reply = (
                    f"RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\n"
                    f'WWW-Authenticate: Digest realm="{realm}", nonce="{nonce}"\r\n\r\n'
                )
            self.wfile.write(reply.encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with _Threaded(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)) as server:
        yield server.port, login


class TlsServer(socketserver.ThreadingTCPServer):
    """Accepts TLS handshakes with the given context and closes: enough for the TLS checks."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(5)
                with contextlib.suppress(OSError), context.wrap_socket(self.request, server_side=True) as tls:
                    tls.recv(1)

        super().__init__(("127.0.0.1", 0), Handler)


def self_signed_certificate(directory: Path, *, expired: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab camera")])
    now = dt.datetime.now(dt.UTC)
    not_after = now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@pytest.fixture
def old_tls_server(tmp_path: Path) -> Iterator[int]:
    """A TLS server that still accepts TLS 1.0 and 1.1, with an expired self-signed certificate."""
    cert_file, key_file = self_signed_certificate(tmp_path, expired=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the weakness under test
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(cert_file, key_file)
    with _Threaded(TlsServer(context)) as server:
        yield server.port


@pytest.fixture
def ssdp_responder() -> Iterator[int]:
    """Answers an SSDP M-SEARCH as a UPnP device does (on a free port instead of 1900)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data.startswith(b"M-SEARCH"):
                sock.sendto(
                    b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nST: upnp:rootdevice\r\n"
                    b"SERVER: Linux/4.9 UPnP/1.0 LabCam/1.0\r\nUSN: uuid:lab::upnp:rootdevice\r\n\r\n",
                    peer,
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
