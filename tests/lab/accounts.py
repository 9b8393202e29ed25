"""Helpers for accounts tests: make a person, sign them in the whole way, compute their TOTP codes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pyotp

from thingward.accounts.mail import SmtpMailer
from thingward.accounts.service import Accounts, LoginResult
from thingward.config import AccountsSettings, SmtpSettings
from thingward.platform import Platform, cli_actor

PASSWORD = "tangerine harpsichord velvet"


class FakeClock:
    """The service's clock: starts at a fixed instant and moves only when a test says so."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


# Cheap argon2 parameters keep the suite fast; tests of the production costs say so.
FAST = AccountsSettings(argon2_time_cost=1, argon2_memory_kib=8192, argon2_parallelism=1)


def make_accounts(platform: Platform, smtp: SmtpSettings, clock: FakeClock, **changes: Any) -> Accounts:
    return Accounts(platform.db, dataclasses.replace(FAST, **changes), SmtpMailer(smtp), clock)


def make_user(accounts: Accounts, email: str = "alice@example.com", admin: bool = False) -> int:
    info, _ = accounts.create_user(cli_actor(), email, PASSWORD, name="Alice", admin=admin)
    return info.id


def signed_in(accounts: Accounts, inbox: object, email: str = "alice@example.com", ua: str = "Firefox") -> LoginResult:
    """Sign in from a new browser without 2FA: password, then the mailed code."""
    first = accounts.login(email, PASSWORD, ip="127.0.0.1", user_agent=ua)
    assert first.outcome == "need_email_code", first
    code = inbox.code_in_last(email)  # type: ignore[attr-defined]
    result = accounts.login(email, PASSWORD, ip="127.0.0.1", user_agent=ua, second_factor=code)
    assert result.outcome == "ok", result
    return result


def totp_code(secret: str, accounts: Accounts, offset_steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(accounts.clock().timestamp() + 30 * offset_steps)


def enroll_totp(accounts: Accounts, user_id: int) -> tuple[str, list[str]]:
    enrolment = accounts.begin_totp(user_id)
    codes, _ = accounts.confirm_totp(user_id, totp_code(enrolment.secret, accounts))
    return enrolment.secret, codes
