"""Claim tokens and claim enrollment: a signed-in person asks for a claim token, the app hands it to the
device inside the provisioning session, and the device, once online, enrolls with it and a CSR.

The platform then creates the thing (named by the device id on the label), issues its certificate, puts
it in the product's default thing group and shares it, as owner, with the person's household user group
(made for them if they have none). A claim token is random (256 bits), stored as a SHA-256 digest,
valid for minutes, used once (a conditional UPDATE: two racing devices cannot both win), and bound to the
person who asked for it (and to the label's device id when the app gave it). Every refusal is audited
with its reason; the device is told one message for all of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from thingward.accounts.sharing import add_member, add_user_group, groups_of, share_thing
from thingward.errors import ConflictError, EnrollmentRefusedError, NotFoundError
from thingward.names import validate_name
from thingward.pki.csr import parse_device_csr
from thingward.platform import Platform
from thingward.registry import certificates, things
from thingward.registry.audit_log import Actor, record_event
from thingward.registry.models import ClaimToken, DeviceReport, Thing, User, UserGroup

CLAIM_PREFIX = "twc_"
REFUSED = "claim refused: the claim token is unknown, already used, expired, or not for this device"
HOUSEHOLD_PREFIX = "household-"
MAX_OPEN_CLAIMS = 10  # unused, unexpired claims one person may hold at once
_INTERNAL_TOKEN_TTL = dt.timedelta(minutes=1)  # the enrollment token made and spent in the same transaction

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def claim_digest(token: str) -> str:
    # 256 random bits: a plain SHA-256 is enough, there is no dictionary to slow down.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class NewClaim:
    id: int
    token: str
    device_id: str | None
    expires_at: dt.datetime

    def __repr__(self) -> str:
        return f"NewClaim(id={self.id}, device_id={self.device_id!r}, expires_at={self.expires_at.isoformat()})"


@dataclass(frozen=True)
class ClaimStatus:
    id: int
    state: str  # pending | enrolled | expired
    device_id: str | None
    thing: str | None
    online: bool  # the claimed device has reported its state since it enrolled
    expires_at: dt.datetime

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "device_id": self.device_id, "thing": self.thing,
                "online": self.online, "expires_at": self.expires_at.isoformat()}  # fmt: skip


@dataclass(frozen=True)
class ClaimEnrollment:
    thing: str
    owner: str
    household: str
    enrollment: certificates.Enrollment


def household_group(session: Session, actor: Actor, user: User) -> str:
    """The user group a person's devices are shared with: `household-<user id>` if they are in it, else
    their only group, else a new `household-<user id>` with them as its member."""
    own = f"{HOUSEHOLD_PREFIX}{user.id}"
    groups = groups_of(session, user)
    if own in groups:
        return own
    if len(groups) == 1:
        return groups[0]
    if session.execute(select(UserGroup.id).where(UserGroup.name == own)).first() is None:
        add_user_group(session, actor, own, description=f"household of {user.email}")
    add_member(session, actor, own, user)
    return own


class Claims:
    """Claim tokens of one platform."""

    def __init__(self, platform: Platform, clock: Clock = utc_now) -> None:
        self.platform = platform
        self.clock = clock

    @property
    def ttl(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.platform.settings.onboarding.claim_ttl_seconds)

    def mint(self, user_id: int, device_id: str | None, source: str) -> NewClaim:
        """A claim token for the person `user_id` (and the label's device, if given); shown once."""
        if device_id is not None:
            validate_name(device_id, "device id")
        token = CLAIM_PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        with self.platform.db.session() as session:
            user = session.get(User, user_id)
            if user is None or user.disabled:
                raise NotFoundError("no such user")
            open_claims = session.execute(
                select(func.count(ClaimToken.id)).where(
                    ClaimToken.user_id == user.id, ClaimToken.used_at.is_(None), ClaimToken.expires_at > now
                )
            ).scalar_one()
            if open_claims >= MAX_OPEN_CLAIMS:
                raise ConflictError(
                    f"you hold {open_claims} unused claim tokens already: finish those setups or wait "
                    f"{self.ttl.seconds // 60} minutes for them to expire"
                )
            row = ClaimToken(user_id=user.id, token_sha256=claim_digest(token), device_id=device_id,
                             created_at=now, expires_at=now + self.ttl)  # fmt: skip
            session.add(row)
            session.flush()
            detail = {"claim": row.id, "device_id": device_id, "expires_at": row.expires_at.isoformat()}
            record_event(session, Actor(user.email, source), "claim.create", f"user:{user.email}", detail)
            return NewClaim(row.id, token, device_id, row.expires_at)

    def status(self, user_id: int, claim_id: int, source: str) -> ClaimStatus:
        """Where a claim stands, for the person who made it only: another person's claim is NotFoundError,
        the same as a missing one, and the attempt is audited."""
        now = self.clock()
        with self.platform.db.read() as session:
            row = session.get(ClaimToken, claim_id)
            user = session.get(User, user_id)
            if row is not None and user is not None and row.user_id == user.id:
                online = False
                if row.thing_name is not None and row.used_at is not None:
                    received = session.execute(
                        select(DeviceReport.received_at).join(Thing).where(Thing.name == row.thing_name)
                    ).scalar_one_or_none()
                    online = received is not None and received >= row.used_at
                state = "enrolled" if row.used_at is not None else ("expired" if row.expires_at <= now else "pending")
                return ClaimStatus(row.id, state, row.device_id, row.thing_name, online, row.expires_at)
            email = user.email if user is not None else f"user:{user_id}"
            owner = row.user_id if row is not None else None
        with self.platform.db.session() as session:
            record_event(session, Actor(email, source), "claim.refused", f"claim:{claim_id}",
                         {"reason": "unknown claim" if owner is None else "claim of another user"})  # fmt: skip
        raise NotFoundError(f"no claim {claim_id}")

    def enroll(self, token: str, device_id: str, csr_pem: bytes | str, source: str) -> ClaimEnrollment:
        """Create, certify and hand over the thing a device claims with `token`; see the module doc."""
        try:
            with self.platform.db.session() as session:
                return self._enroll(session, token, device_id, csr_pem, source)
        except EnrollmentRefusedError as e:
            with self.platform.db.session() as session:  # the refusal's transaction was rolled back
                record_event(session, Actor("anonymous", source), "claim.refused", f"device:{device_id}"[:128],
                             {"reason": e.reason})  # fmt: skip
            raise

    def _enroll(self, session: Session, token: str, device_id: str, csr_pem: bytes | str,
                source: str) -> ClaimEnrollment:  # fmt: skip
        now = self.clock()
        validate_name(device_id, "device id")
        row = session.execute(
            select(ClaimToken).where(ClaimToken.token_sha256 == claim_digest(token))
        ).scalar_one_or_none()
        user = session.get(User, row.user_id) if row is not None else None
        reason = _why_refused(row, user, device_id, now)
        if row is None or user is None or reason:
            raise EnrollmentRefusedError(REFUSED, reason=reason)
        parse_device_csr(csr_pem, expected_name=device_id)  # a bad CSR costs the device nothing
        if session.execute(select(Thing.id).where(Thing.name == device_id)).first() is not None:
            raise ConflictError(
                f"a device named {device_id!r} is registered already: an operator must remove or re-enroll it"
            )
        claimed = session.execute(
            update(ClaimToken)
            .where(ClaimToken.id == row.id, ClaimToken.used_at.is_(None), ClaimToken.expires_at > now)
            .values(used_at=now, thing_name=device_id)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise EnrollmentRefusedError(REFUSED, reason=f"claim {row.id} used by a concurrent request")
        actor = Actor(user.email, source)
        group = self.platform.settings.onboarding.default_thing_group
        things.add_thing(session, actor, device_id, groups=[group])
        issued = things.create_enrollment_token(session, actor, device_id, _INTERNAL_TOKEN_TTL)
        validity = dt.timedelta(days=self.platform.settings.pki.device_certificate_days)
        enrollment = certificates.enroll_device(session, self.platform.ca, issued.token, csr_pem, validity, source)
        household = household_group(session, actor, user)
        share_thing(session, actor, device_id, household, "owner")
        record_event(session, actor, "thing.claimed", f"thing:{device_id}",
                     {"claim": row.id, "user": user.email, "user_group": household, "group": group})  # fmt: skip
        return ClaimEnrollment(device_id, user.email, household, enrollment)


def _why_refused(row: ClaimToken | None, user: User | None, device_id: str, now: dt.datetime) -> str:
    # For the audit log only: the device gets one message for every reason.
    if row is None or user is None:
        return "unknown claim token"
    if row.used_at is not None:
        return f"claim {row.id} of {user.email} used again (first by {row.thing_name})"
    if row.expires_at <= now:
        return f"claim {row.id} of {user.email} expired"
    if user.disabled:
        return f"claim {row.id} of disabled user {user.email}"
    if row.device_id is not None and row.device_id != device_id:
        return f"claim {row.id} of {user.email} for {row.device_id} presented by {device_id}"
    return ""
