"""Helpers for accounts tests: make a person, sign them in the whole way, compute their TOTP codes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyotp
import pytest
from aiosmtpd.controller import Controller

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


class Inbox:
    """What the SMTP server received, as (recipients, subject, body)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str, str]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes, policy

        message = message_from_bytes(envelope.content, policy=policy.default)
        body = message.get_body(("plain",))
        with self._lock:
            self.messages.append((list(envelope.rcpt_tos), str(message["Subject"]), body.get_content() if body else ""))
        return "250 OK"

    def to(self, address: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(subject, body) for rcpt, subject, body in self.messages if address in rcpt]

    def last_to(self, address: str) -> tuple[str, str]:
        mails = self.to(address)
        assert mails, f"no mail to {address}"
        return mails[-1]

    def bodies_to(self, address: str) -> list[str]:
        return [body for _subject, body in self.to(address)]

    def find(self, address: str, pattern: str) -> str:
        """The first group of `pattern` in the newest mail to `address` that matches it."""
        for body in reversed(self.bodies_to(address)):
            match = re.search(pattern, body)
            if match:
                return match.group(1)
        raise AssertionError(f"no mail to {address} matching {pattern!r}")

    def code_in_last(self, address: str) -> str:
        match = re.search(r"the code is (\d{8})", self.last_to(address)[1])
        assert match, self.last_to(address)
        return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, SmtpSettings]]:
    """A real SMTP server (aiosmtpd) on a free loopback port, and the settings that reach it."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, SmtpSettings(host="127.0.0.1", port=controller.port, security="none", timeout_seconds=5)
    finally:
        controller.stop()


# -- fixtures, registered for every test by `pytest_plugins` in tests/conftest.py --------------------------


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    with smtp_server() as pair:
        yield pair


@pytest.fixture
def inbox(smtp: tuple[Inbox, SmtpSettings]) -> Inbox:
    return smtp[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
