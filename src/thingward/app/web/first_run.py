"""The first admin of a fresh install: made with a random password shown once and a forced change at the
first sign-in (and 2FA to set up, by default). There are no default accounts."""

from __future__ import annotations

from dataclasses import dataclass

from thingward.accounts.mail import NoMailer
from thingward.accounts.service import Accounts
from thingward.platform import Platform, cli_actor

FIRST_ADMIN_EMAIL = "admin@example.com"


@dataclass(frozen=True)
class FirstAdmin:
    email: str
    password: str  # generated; shown once, never stored in clear


def ensure_first_admin(platform: Platform, email: str = FIRST_ADMIN_EMAIL) -> FirstAdmin | None:
    """Create the first admin if there is no user at all; None when someone exists already."""
    accounts = Accounts.for_platform(platform, mailer=NoMailer())
    if accounts.list_users():
        return None
    _info, password = accounts.create_user(cli_actor(), email, None, admin=True)
    if password is None:  # no password given always means one was generated
        raise RuntimeError("the first admin was created without a generated password")
    return FirstAdmin(email=email, password=password)
