"""Device certificates: issuance from a CSR against a single-use token, revocation, and the CRL contents."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from thingward.errors import EnrollmentRefusedError, InvalidInputError, NotFoundError
from thingward.pki.ca import (
    CertificateAuthority,
    certificate_pem,
    fingerprint_sha256,
    issue_device_certificate,
    public_key_sha256,
)
from thingward.pki.csr import csr_common_name, parse_device_csr
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import Certificate, EnrollmentToken, Thing
from thingward.registry.things import get_thing, token_digest

MAX_REASON_LENGTH = 64  # the column's length: PostgreSQL enforces it, so it is checked first on every database
REFUSED = "enrollment refused: the token is unknown, already used, expired, or not for this device"


@dataclass(frozen=True)
class Enrollment:
    thing: str
    certificate: x509.Certificate


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    return type(key).__name__


def enroll_device(
    session: Session,
    ca: CertificateAuthority,
    token: str,
    csr_pem: bytes | str,
    validity: dt.timedelta,
    source: str,
) -> Enrollment:
    """Issue a certificate for the thing a valid token names, from a CSR whose subject names that thing.

    The CSR is checked before the token is spent, so a malformed CSR costs the device nothing; the token
    is then claimed with a conditional UPDATE, so two requests racing with one token cannot both win.
    """
    now = dt.datetime.now(dt.UTC)
    row = session.execute(
        select(EnrollmentToken).where(EnrollmentToken.token_sha256 == token_digest(token))
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= now or row.thing.disabled:
        raise EnrollmentRefusedError(REFUSED, reason=_why(row, now))
    thing = row.thing
    csr = parse_device_csr(csr_pem)  # CsrError says exactly what is wrong; the token is not spent
    requested = csr_common_name(csr)
    if requested != thing.name:
        raise EnrollmentRefusedError(REFUSED, reason=f"token of {thing.name} presented for {requested}")
    key_hash = public_key_sha256(csr.public_key())
    holder = session.execute(
        select(Thing.name).join(Certificate).where(Certificate.public_key_sha256 == key_hash, Thing.id != thing.id)
    ).first()
    if holder is not None:
        # A key burned into every unit, or copied from another device: refused before the token is spent.
        raise EnrollmentRefusedError(
            REFUSED, reason=f"{thing.name} presented the public key already enrolled for {holder[0]}"
        )
    claimed = session.execute(
        update(EnrollmentToken)
        # Re-checked in the UPDATE itself: on PostgreSQL (READ COMMITTED) a revoke or disable may have
        # voided the token between the SELECT above and here.
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at > now)
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise EnrollmentRefusedError(REFUSED, reason=f"token of {thing.name} used by a concurrent request")
    cert = issue_device_certificate(ca, csr, thing.name, validity, now)
    session.add(
        Certificate(
            serial=format(cert.serial_number, "x"),
            fingerprint_sha256=fingerprint_sha256(cert),
            thing=thing,
            status="active",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            key_type=_key_type(cert),
            public_key_sha256=key_hash,
            pem=certificate_pem(cert).decode(),
        )
    )
    record_event(
        session,
        Actor(f"thing:{thing.name}", source),
        "thing.enrolled",
        f"thing:{thing.name}",
        {"serial": format(cert.serial_number, "x"), "not_after": cert.not_valid_after_utc.isoformat()},
    )
    return Enrollment(thing=thing.name, certificate=cert)


def _why(row: EnrollmentToken | None, now: dt.datetime) -> str:
    # For the audit log only: the caller gets one message for every reason.
    if row is None:
        return "unknown token"
    if row.used_at is not None:
        return f"token of {row.thing.name} reused"
    if row.expires_at <= now:
        return f"token of {row.thing.name} expired"
    return f"thing {row.thing.name} disabled"


def revoke_thing_certificates(session: Session, actor: Actor, name: str, reason: str = "unspecified") -> list[str]:
    """Revoke every active certificate of a thing; returns their serials (hex)."""
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidInputError(
            f"the revocation reason is {len(reason)} characters long; the limit is {MAX_REASON_LENGTH}"
        )
    thing = get_thing(session, name)
    now = dt.datetime.now(dt.UTC)
    active = (
        session.execute(select(Certificate).where(Certificate.thing_id == thing.id, Certificate.status == "active"))
        .scalars()
        .all()
    )
    for cert in active:
        cert.status = "revoked"
        cert.revoked_at = now
        cert.revocation_reason = reason
    serials = [c.serial for c in active]
    # A token handed out before the revocation must not bring the device straight back.
    _void_unused_tokens(session, thing, now)
    record_event(session, actor, "thing.revoke", f"thing:{name}", {"serials": serials, "reason": reason})
    return serials


def set_thing_disabled(session: Session, actor: Actor, name: str, disabled: bool) -> list[str]:
    """Disable (revoking its certificates, refusing new tokens) or enable a thing."""
    thing = get_thing(session, name)
    thing.disabled = disabled
    serials: list[str] = []
    if disabled:
        serials = revoke_thing_certificates(session, actor, name, reason="thing disabled")
    record_event(session, actor, "thing.disable" if disabled else "thing.enable", f"thing:{name}", {})
    return serials


def _void_unused_tokens(session: Session, thing: Thing, now: dt.datetime) -> None:
    session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.thing_id == thing.id, EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at > now
        )
        .values(expires_at=now)
    )


def revoked_serials(session: Session) -> list[tuple[int, dt.datetime]]:
    rows = session.execute(
        select(Certificate.serial, Certificate.revoked_at).where(Certificate.status == "revoked")
    ).all()
    return [(int(serial, 16), revoked_at) for serial, revoked_at in rows if revoked_at is not None]


def find_certificate(session: Session, serial_or_fingerprint: str) -> Certificate:
    key = serial_or_fingerprint.lower().replace(":", "")
    cert = session.execute(
        select(Certificate).where((Certificate.serial == key) | (Certificate.fingerprint_sha256 == key))
    ).scalar_one_or_none()
    if cert is None:
        raise NotFoundError(f"no certificate with serial or fingerprint {serial_or_fingerprint!r}")
    return cert


def list_certificates(session: Session, thing: Thing | None = None) -> Sequence[Certificate]:
    query = select(Certificate).order_by(Certificate.id)
    if thing is not None:
        query = query.where(Certificate.thing_id == thing.id)
    return session.execute(query).scalars().all()
