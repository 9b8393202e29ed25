"""Accounts fixtures: a real data dir, a real SMTP server (aiosmtpd) on loopback, and a clock tests move."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from lab.accounts import FakeClock, make_accounts
from thingward.accounts.service import Accounts
from thingward.config import SmtpSettings
from thingward.platform import Platform


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

    def code_in_last(self, address: str) -> str:
        match = re.search(r"the code is (\d{8})", self.last_to(address)[1])
        assert match, self.last_to(address)
        return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-connection chatter
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield inbox, SmtpSettings(host="127.0.0.1", port=controller.port, security="none", timeout_seconds=5)
    finally:
        controller.stop()


@pytest.fixture
def inbox(smtp: tuple[Inbox, SmtpSettings]) -> Inbox:
    return smtp[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def accounts(platform: Platform, smtp: tuple[Inbox, SmtpSettings], clock: FakeClock) -> Accounts:
    return make_accounts(platform, smtp[1], clock)


@pytest.fixture
def data_dir(platform: Platform) -> Path:
    return platform.settings.data_dir
