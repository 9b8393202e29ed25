"""TLS checks on a port that speaks TLS: which protocol versions it accepts, and its certificate
(expired, self-signed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from thingward.audit.scanner.model import TlsInfo
from thingward.audit.scanner.wire import client_tls_context, close_quietly

VERSIONS: tuple[tuple[str, ssl.TLSVersion], ...] = (
    ("TLSv1", ssl.TLSVersion.TLSv1),
    ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2),
    ("TLSv1.3", ssl.TLSVersion.TLSv1_3),
)


async def tls_handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes | None:
    """The server's certificate (DER) if a handshake with this context succeeds, else None."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="")
    except (OSError, TimeoutError, ssl.SSLError, EOFError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return der or b""
    finally:
        await close_quietly(writer)


def describe_certificate(der: bytes, now: dt.datetime) -> TlsInfo:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        return TlsInfo(error=f"unreadable certificate: {e}")
    self_signed = False
    if cert.issuer == cert.subject:
        try:
            cert.verify_directly_issued_by(cert)
            self_signed = True
        except (InvalidSignature, ValueError, TypeError):
            self_signed = False
    not_after = cert.not_valid_after_utc
    return TlsInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_after=not_after,
        expired=not_after <= now or cert.not_valid_before_utc > now,
        self_signed=self_signed,
    )


async def check_tls(host: str, port: int, timeout: float, now: dt.datetime | None = None) -> TlsInfo | None:
    """None if the port does not speak TLS at all; else the versions it accepts and its certificate."""
    der = await tls_handshake(host, port, client_tls_context(), timeout)
    if der is None:
        return None
    accepted = await asyncio.gather(
        *(tls_handshake(host, port, client_tls_context(version), timeout) for _, version in VERSIONS)
    )
    versions = tuple(name for (name, _), cert in zip(VERSIONS, accepted, strict=True) if cert is not None)
    info = describe_certificate(der, now or dt.datetime.now(dt.UTC)) if der else TlsInfo(error="no certificate sent")
    return TlsInfo(
        versions=versions,
        subject=info.subject,
        issuer=info.issuer,
        not_after=info.not_after,
        expired=info.expired,
        self_signed=info.self_signed,
        error=info.error,
    )
