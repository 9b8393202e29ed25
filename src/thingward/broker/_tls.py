"""TLS for the embedded broker: TLS 1.2+, client certificate required, CRL checked, live CRL reload.

Three facts, found by experiment on OpenSSL 3.0, shape this module:
- Adding a second CRL to a live `SSLContext` works only if its lastUpdate is strictly newer (one-second
  resolution): two revocations in the same second and the second is silently ignored. So a reload
  builds a fresh context, and the SNI callback (which OpenSSL calls on every handshake, with or without
  SNI) moves each new connection onto the newest context.
- TLS session resumption skips certificate verification: a revoked device that resumes its old TLS 1.2
  session (session IDs, which Python cannot turn off) or TLS 1.3 ticket gets in. Tickets are turned
  off, and every connection, resumed or not, goes through `ServerTls.identify`, which checks the peer
  certificate against the current CRL and its validity period.
- The identity is the name in the certificate of the connection in hand, never anything stored.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from thingward.broker.base import BrokerTls
from thingward.errors import ConfigError, InvalidInputError
from thingward.names import validate_name
from thingward.pki.ca import thing_name_from_certificate, utcnow

__all__ = ["IdentityRefusedError", "ServerTls"]

logger = logging.getLogger(__name__)

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


@dataclass(frozen=True)
class PeerIdentity:
    thing: str
    not_after: dt.datetime
    serial: str = ""  # the certificate's serial number, hex


class IdentityRefusedError(Exception):
    """The peer certificate of a finished handshake does not give an identity we accept."""

    def __init__(self, reason: str, thing: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.thing = thing


@dataclass(frozen=True)
class _TlsState:
    context: ssl.SSLContext
    revoked: frozenset[tuple[bytes, int]]  # (issuer DER, serial)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the broker {what} {path}: {e.strerror}") from e


def _load_cas(path: Path) -> list[x509.Certificate]:
    try:
        cas = x509.load_pem_x509_certificates(_read(path, "CA file"))
    except ValueError as e:
        raise ConfigError(f"the broker CA file {path} holds no PEM certificate") from e
    return cas


def _verify_crl(crl: x509.CertificateRevocationList, cas: list[x509.Certificate]) -> None:
    for ca in cas:
        if ca.subject != crl.issuer:
            continue
        key = ca.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            continue
        try:
            if crl.is_signature_valid(key):
                return
        except (InvalidSignature, TypeError):
            continue
    raise ConfigError(f"the CRL issued by {crl.issuer.rfc4514_string()} is not signed by the broker's CA")


def _load_revoked(path: Path, cas: list[x509.Certificate], now: dt.datetime) -> frozenset[tuple[bytes, int]]:
    data = _read(path, "CRL file")
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        raise ConfigError(f"the broker CRL file {path} holds no PEM CRL")
    revoked: set[tuple[bytes, int]] = set()
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError as e:
            raise ConfigError(f"the broker CRL file {path} holds a malformed CRL") from e
        _verify_crl(crl, cas)
        next_update = crl.next_update_utc
        if next_update is not None and next_update < now:
            # OpenSSL refuses every handshake against an expired CRL: fail closed, but say why.
            logger.warning(
                "the CRL in %s expired at %s: every device is refused until a fresh CRL is loaded",
                path,
                next_update.isoformat(),
            )
        issuer = crl.issuer.public_bytes()
        revoked.update((issuer, entry.serial_number) for entry in crl)
    return frozenset(revoked)


def build_server_context(tls: BrokerTls) -> ssl.SSLContext:
    """The listening context: TLS 1.2 minimum, client certificate REQUIRED, leaf checked against the CRL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    # No TLS tickets: a resumed session skips certificate verification (see module docstring).
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.num_tickets = 0
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
        context.load_verify_locations(cafile=tls.ca_file)
        context.load_verify_locations(cafile=tls.crl_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot build the broker TLS context from {tls}: {e}") from e
    return context


class ServerTls:
    """Owns the broker's TLS contexts and the revocation list; `reload_crl` swaps both for new handshakes."""

    def __init__(self, tls: BrokerTls) -> None:
        self._tls = tls
        self._state = self._build()
        # The server is created once with this context; the SNI callback moves each handshake onto
        # the newest context, so a reload never needs a new listening socket.
        self.listening_context = self._state.context
        self.listening_context.sni_callback = self._select_context

    def _build(self) -> _TlsState:
        cas = _load_cas(self._tls.ca_file)
        revoked = _load_revoked(self._tls.crl_file, cas, utcnow())
        return _TlsState(context=build_server_context(self._tls), revoked=revoked)

    def reload_crl(self) -> None:
        """Re-read the CRL (and certificates) into a fresh context used by every handshake from now on.

        On any error the previous context stays in force and the error is raised.
        """
        state = self._build()
        state.context.sni_callback = self._select_context
        self._state = state
        logger.info("broker CRL reloaded from %s: %d revoked certificate(s)", self._tls.crl_file, len(state.revoked))

    def _select_context(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        current = self._state.context
        if ssl_object.context is not current:
            ssl_object.context = current

    def identify(self, ssl_object: ssl.SSLObject | None) -> str:
        """The thing named by the peer certificate of this finished handshake, checked again here.

        The handshake verified chain and CRL, except on a resumed session; so revocation, validity and
        the name are checked here for every connection. Raises IdentityRefusedError.
        """
        return self.identify_peer(ssl_object).thing

    def identify_peer(self, ssl_object: ssl.SSLObject | None) -> PeerIdentity:
        """`identify`, with the certificate's end of validity (a live session must end there)."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise IdentityRefusedError("no client certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as e:
            raise IdentityRefusedError("unparsable client certificate") from e
        thing = thing_name_from_certificate(cert)
        if (cert.issuer.public_bytes(), cert.serial_number) in self._state.revoked:
            raise IdentityRefusedError("certificate revoked", thing)
        now = utcnow()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise IdentityRefusedError("certificate outside its validity period", thing)
        if thing is None:
            raise IdentityRefusedError("certificate names no thing")
        try:
            return PeerIdentity(
                thing=validate_name(thing), not_after=cert.not_valid_after_utc, serial=f"{cert.serial_number:x}"
            )
        except InvalidInputError as e:
            raise IdentityRefusedError("certificate names an invalid thing name") from e
