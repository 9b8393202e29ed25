"""Failed sign-ins per account and per client address: growing delays, then a lockout for accounts.

An attempt is charged *before* the password is checked (and refunded when it turns out right), so a
burst of parallel guesses cannot all slip through while the first one is still being verified. The
account key is a digest of the email as typed, whether or not such an account exists: an unknown email
is throttled and "locked" exactly like a real one, so neither tells a prober which emails are taken.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from thingward.registry.models import LoginThrottle


@dataclass(frozen=True)
class ThrottleRule:
    """After `free_failures`, each failure doubles the wait from `base_seconds` up to `max_seconds`."""

    free_failures: int
    base_seconds: float
    max_seconds: float
    # Failures older than this, with none since, are forgotten.
    forget_after: dt.timedelta

    def delay_after(self, failures: int) -> float:
        if failures <= self.free_failures:
            return 0.0
        return float(min(self.base_seconds * 2 ** (failures - self.free_failures - 1), self.max_seconds))


ACCOUNT_RULE = ThrottleRule(free_failures=3, base_seconds=1, max_seconds=60, forget_after=dt.timedelta(hours=1))
# One address may try more accounts (a household behind one NAT), but password spraying slows down fast.
ADDRESS_RULE = ThrottleRule(free_failures=20, base_seconds=1, max_seconds=300, forget_after=dt.timedelta(hours=1))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    locked: bool = False
    retry_after: float = 0.0


def account_key(email: str) -> str:
    return "account:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]


def address_key(ip: str) -> str:
    return "ip:" + ip[:60]


def _row(session: Session, key: str) -> LoginThrottle | None:
    return session.execute(select(LoginThrottle).where(LoginThrottle.key == key).with_for_update()).scalar_one_or_none()


def hold(session: Session, keys: list[str], now: dt.datetime) -> None:
    """Make sure the rows of `keys` exist and lock them for this transaction (in one order, so two
    requests never wait on each other crosswise): the check and the charge that follow are then one
    step for parallel requests, on PostgreSQL as on SQLite (whose write transactions are serial anyway)."""
    for key in sorted(set(keys)):
        if _row(session, key) is None:
            try:
                with session.begin_nested():
                    session.add(LoginThrottle(key=key, failures=0, last_failure_at=now, next_allowed_at=now))
            except IntegrityError:
                pass  # another request made it first; the select below waits for it and locks it
            _row(session, key)


def peek(session: Session, key: str, now: dt.datetime) -> Verdict:
    """May an attempt on `key` go ahead now? Charges nothing."""
    row = _row(session, key)
    if row is None:
        return Verdict(allowed=True)
    if row.locked_until is not None and row.locked_until > now:
        return Verdict(allowed=False, locked=True, retry_after=(row.locked_until - now).total_seconds())
    if row.next_allowed_at > now:
        return Verdict(allowed=False, retry_after=(row.next_allowed_at - now).total_seconds())
    return Verdict(allowed=True)


def charge(session: Session, key: str, rule: ThrottleRule, now: dt.datetime) -> int:
    """Count one failure on `key` (refund it with `refund` if the attempt succeeds); the new count."""
    row = _row(session, key)
    if row is None:
        row = LoginThrottle(key=key, failures=0, last_failure_at=now, next_allowed_at=now)
        session.add(row)
    elif (row.locked_until is not None and row.locked_until <= now) or (
        row.locked_until is None and now - row.last_failure_at > rule.forget_after
    ):
        # A lockout served, or an hour of quiet, starts the count again.
        row.failures = 0
        row.locked_until = None
    row.failures += 1
    row.last_failure_at = now
    row.next_allowed_at = now + dt.timedelta(seconds=rule.delay_after(row.failures))
    session.flush()
    return row.failures


def refund(session: Session, key: str, now: dt.datetime, forget: bool) -> None:
    """Take back the charge of an attempt that succeeded; `forget` clears the key's whole history."""
    row = _row(session, key)
    if row is None:
        return
    if forget:
        session.delete(row)
    else:
        row.failures = max(0, row.failures - 1)
        row.next_allowed_at = now
    session.flush()


def lock(session: Session, key: str, until: dt.datetime) -> None:
    row = _row(session, key)
    if row is not None:
        row.locked_until = until
        session.flush()


def unlock(session: Session, key: str) -> bool:
    row = _row(session, key)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True
