"""Accounts fixtures: a real data dir, a real SMTP server (aiosmtpd) on loopback, and a clock tests move."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.accounts import FakeClock, Inbox, make_accounts
from thingward.accounts.service import Accounts
from thingward.config import SmtpSettings
from thingward.platform import Platform


@pytest.fixture
def accounts(platform: Platform, smtp: tuple[Inbox, SmtpSettings], clock: FakeClock) -> Accounts:
    return make_accounts(platform, smtp[1], clock)


@pytest.fixture
def data_dir(platform: Platform) -> Path:
    return platform.settings.data_dir
