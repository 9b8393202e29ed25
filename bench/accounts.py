"""What a sign-in costs: argon2id at the configured costs, the password policy check, and a whole login.

Prints figures for the default costs (`[accounts]` argon2_*, OWASP's m=19 MiB, t=2, p=1) beside
argon2-cffi's default (RFC 9106 low-memory: m=64 MiB, t=3, p=4), measured in the same run.
Runs on a throwaway data dir; no network except a local SMTP-less login (a known browser, no mail).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from thingward.accounts.passwords import PasswordHasher, PasswordPolicy, check_password, context_words
from thingward.accounts.service import Accounts
from thingward.config import AccountsSettings
from thingward.platform import Platform, cli_actor, init_data_dir

PASSWORD = "tangerine harpsichord velvet"


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    runs = max(1, min(args.runs, 100))
    settings = AccountsSettings()
    ours = PasswordHasher.from_settings(settings)
    owasp = PasswordHasher(time_cost=3, memory_kib=64 * 1024, parallelism=4)
    stored_ours, stored_owasp = ours.hash(PASSWORD), owasp.hash(PASSWORD)
    t_ours = timed(lambda: ours.verify(stored_ours, PASSWORD), runs)
    t_owasp = timed(lambda: owasp.verify(stored_owasp, PASSWORD), runs)
    policy = PasswordPolicy.from_settings(settings)
    context = context_words("alice.smith@example.com", "Alice Smith")
    t_policy = timed(lambda: check_password(PASSWORD, policy, context), runs)
    t_policy_long = timed(lambda: check_password("word " * 50, policy, context), runs)
    with tempfile.TemporaryDirectory() as tmp:
        init_data_dir(Path(tmp) / "d")
        platform = Platform.open(Path(tmp) / "d")
        try:
            clock = _JumpingClock()
            accounts = Accounts(platform.db, settings, mailer=_NoMail(), clock=clock)
            accounts.create_user(cli_actor(), "alice@example.com", PASSWORD)
            browser = _first_browser(accounts)
            t_login = timed(
                lambda: accounts.login("alice@example.com", PASSWORD, browser_token=browser, ip="127.0.0.1"), runs
            )
            clock.jumping = True
            # Each failed attempt two hours after the last, so the throttle never answers in their place.
            t_wrong = timed(lambda: accounts.login("alice@example.com", "wrong password", ip="127.0.0.2"), runs)
            t_unknown = timed(lambda: accounts.login("nobody@example.com", "wrong password", ip="127.0.0.2"), runs)
        finally:
            platform.close()
    rows = [
        (
            f"argon2id verify, ours (t={settings.argon2_time_cost}, m={settings.argon2_memory_kib // 1024} MiB, "
            f"p={settings.argon2_parallelism})",
            t_ours,
        ),
        ("argon2id verify, argon2-cffi default / RFC 9106 (t=3, m=64 MiB, p=4)", t_owasp),
        ("password policy check (zxcvbn + blocklist + context)", t_policy),
        ("password policy check, 250 characters", t_policy_long),
        ("whole sign-in, known browser (SQLite, one session made)", t_login),
        ("whole sign-in, wrong password", t_wrong),
        ("whole sign-in, unknown email (checked against a dummy hash)", t_unknown),
    ]
    for label, seconds in rows:
        print(f"{label:<72} {seconds * 1000:8.1f} ms")
    print(f"{'ours / RFC 9106 low-memory default':<72} {t_ours / t_owasp:8.2f} x")
    print(f"{'unknown email / wrong password':<72} {t_unknown / t_wrong:8.2f} x")
    sys.stdout.flush()


class _JumpingClock:
    """Real time, plus two hours more at every reading: failures are forgotten between attempts."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()
        self.jumping = False

    def __call__(self) -> dt.datetime:
        if self.jumping:
            self.offset += dt.timedelta(hours=2)
        return dt.datetime.now(dt.UTC) + self.offset


class _NoMail:
    def send(self, mail: object) -> None:
        pass


def _first_browser(accounts: Accounts) -> str:
    """Sign in once from a new browser, reading the mailed code from the database-free mail stub."""
    codes: list[str] = []

    class Capture:
        def send(self, mail) -> None:  # type: ignore[no-untyped-def]
            import re

            found = re.search(r"the code is (\d+)", mail.body)
            if found:
                codes.append(found.group(1))

    accounts.mailer = Capture()
    accounts.login("alice@example.com", PASSWORD)
    result = accounts.login("alice@example.com", PASSWORD, second_factor=codes[-1])
    accounts.mailer = _NoMail()
    assert result.browser_token
    return result.browser_token


if __name__ == "__main__":
    main()
