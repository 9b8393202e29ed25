"""Sign-in: outcomes, new-browser verification, second factors, throttling, lockout, no enumeration."""

from __future__ import annotations

import statistics
import time
from typing import Any

from sqlalchemy import select

from lab.accounts import PASSWORD, enroll_totp, make_user, signed_in, totp_code
from thingward.accounts.service import Accounts, LoginResult
from thingward.registry.audit_log import list_events
from thingward.registry.models import AuditEvent


def attempt(accounts: Accounts, code: str, **kwargs: Any) -> LoginResult:
    return accounts.login("alice@example.com", PASSWORD, second_factor=code, **kwargs)


def test_new_browser_without_2fa_needs_the_mailed_code_and_is_told_of_the_sign_in(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    result = signed_in(accounts, inbox, ua="Firefox 140 on Linux")
    assert result.session_token and result.browser_token
    subject, body = inbox.last_to("alice@example.com")
    assert "New sign-in" in subject
    assert "127.0.0.1" in body and "Firefox 140 on Linux" in body and "2026-11-24 12:00:00 UTC" in body
    # The same browser next time: straight in, no code, no new notice.
    mails = len(inbox.to("alice@example.com"))
    again = accounts.login(
        "alice@example.com",
        PASSWORD,
        ip="127.0.0.1",
        user_agent="Firefox 140 on Linux",
        browser_token=result.browser_token,
    )
    assert again.outcome == "ok" and again.browser_token is None
    assert again.session_token != result.session_token  # a new session id at every sign-in
    assert len(inbox.to("alice@example.com")) == mails


def test_wrong_mailed_code_is_refused_and_the_code_dies_after_five_tries(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    accounts.login("alice@example.com", PASSWORD, ip="127.0.0.1")
    code = inbox.code_in_last("alice@example.com")
    wrong = "00000000" if code != "00000000" else "11111111"
    assert accounts.login("alice@example.com", PASSWORD, second_factor=wrong).outcome == "refused"
    for _ in range(4):
        accounts.clock.advance(120)  # type: ignore[attr-defined]  # past the throttle's delays
        accounts.login("alice@example.com", PASSWORD, second_factor=wrong)
    accounts.clock.advance(120)  # type: ignore[attr-defined]
    assert accounts.login("alice@example.com", PASSWORD, second_factor=code).outcome == "refused"


def test_mailed_code_expires(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    accounts.login("alice@example.com", PASSWORD)
    code = inbox.code_in_last("alice@example.com")
    clock.advance(601)
    assert accounts.login("alice@example.com", PASSWORD, second_factor=code).outcome == "refused"


def test_a_known_browser_of_another_account_is_a_new_browser(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    make_user(accounts, "bob@example.com")
    alice = signed_in(accounts, inbox)
    bob = accounts.login("bob@example.com", PASSWORD, browser_token=alice.browser_token)
    assert bob.outcome == "need_email_code"


def test_2fa_account_needs_the_code_every_time_and_a_used_code_is_refused(accounts: Accounts, inbox, clock) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(30)
    first = accounts.login("alice@example.com", PASSWORD)
    assert first.outcome == "need_second_factor" and first.session_token is None
    code = totp_code(secret, accounts)
    ok = accounts.login("alice@example.com", PASSWORD, second_factor=code)
    assert ok.outcome == "ok"
    # The same code again (replayed within its 30 s, or the next step's drift window): refused.
    assert (
        accounts.login("alice@example.com", PASSWORD, second_factor=code, browser_token=ok.browser_token).outcome
        == "refused"
    )
    # A known browser still needs the code when 2FA is on.
    clock.advance(30)
    assert accounts.login("alice@example.com", PASSWORD, browser_token=ok.browser_token).outcome == "need_second_factor"


def test_wrong_totp_code_is_refused(accounts: Accounts, inbox, clock) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(30)
    good = totp_code(secret, accounts)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    assert accounts.login("alice@example.com", PASSWORD, second_factor=wrong).outcome == "refused"
    assert accounts.login("alice@example.com", "wrong password entirely", second_factor=good).outcome == "refused"


def test_one_step_of_drift_is_accepted_two_are_not(accounts: Accounts, inbox, clock) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(120)
    assert attempt(accounts, totp_code(secret, accounts, -2)).outcome == "refused"
    assert attempt(accounts, totp_code(secret, accounts, +2)).outcome == "refused"
    assert attempt(accounts, totp_code(secret, accounts, -1)).outcome == "ok"
    clock.advance(60)
    assert attempt(accounts, totp_code(secret, accounts, +1)).outcome == "ok"


def test_a_code_older_than_the_last_accepted_one_is_refused(accounts: Accounts, inbox, clock) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(60)
    assert accounts.login("alice@example.com", PASSWORD, second_factor=totp_code(secret, accounts)).outcome == "ok"
    # The previous step's code is still within the drift window, but older than the one just used.
    assert attempt(accounts, totp_code(secret, accounts, -1)).outcome == "refused"


def test_a_recovery_code_works_once(accounts: Accounts, inbox) -> None:
    user_id = make_user(accounts)
    _, codes = enroll_totp(accounts, user_id)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert accounts.login("alice@example.com", PASSWORD, second_factor=codes[3].upper()).outcome == "ok"
    assert accounts.recovery_codes_left(user_id) == 9
    assert accounts.login("alice@example.com", PASSWORD, second_factor=codes[3]).outcome == "refused"


def test_unknown_email_and_wrong_password_look_the_same(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    wrong = accounts.login("alice@example.com", "not the password at all", ip="127.0.0.2")
    unknown = accounts.login("nobody@example.com", "not the password at all", ip="127.0.0.3")
    assert (wrong.outcome, wrong.message, wrong.retry_after) == (unknown.outcome, unknown.message, unknown.retry_after)
    assert wrong.outcome == "refused" and wrong.session_token is None and wrong.user_id is None
    # ... and after enough of them, both are "locked" alike.
    for _ in range(9):
        clock.advance(120)
        wrong = accounts.login("alice@example.com", "not the password at all", ip="127.0.0.2")
        unknown = accounts.login("nobody@example.com", "not the password at all", ip="127.0.0.3")
    assert wrong.outcome == unknown.outcome == "locked"
    assert wrong.message == unknown.message


def test_unknown_email_and_wrong_password_take_similar_time(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)

    def timed(email: str, ip: str) -> float:
        start = time.perf_counter()
        accounts.login(email, "not the password at all", ip=ip)
        clock.advance(3600 * 2)  # forget the failures, so no attempt meets the throttle
        return time.perf_counter() - start

    for _ in range(2):  # warm up
        timed("alice@example.com", "10.0.0.1")
        timed("nobody@example.com", "10.0.0.2")
    known = statistics.median(timed("alice@example.com", "10.0.0.1") for _ in range(7))
    unknown = statistics.median(timed("nobody@example.com", "10.0.0.2") for _ in range(7))
    assert 0.6 < known / unknown < 1.6, (known, unknown)


def test_growing_delays_per_account(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    for _ in range(3):  # three free failures
        assert accounts.login("alice@example.com", "nope nope nope").outcome == "refused"
    delays = []
    for _ in range(4):
        assert accounts.login("alice@example.com", "nope nope nope").outcome == "refused"
        blocked = accounts.login("alice@example.com", PASSWORD)  # even the right password waits
        assert blocked.outcome == "refused" and blocked.retry_after > 0 and "try again" in blocked.message
        delays.append(blocked.retry_after)
        clock.advance(blocked.retry_after)
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert accounts.login("alice@example.com", PASSWORD).outcome == "need_email_code"


def test_lockout_after_ten_failures_with_a_notice_and_the_right_password_does_not_help(
    accounts: Accounts, inbox, clock
) -> None:
    make_user(accounts)
    outcomes = []
    for _ in range(10):
        outcomes.append(accounts.login("alice@example.com", "nope nope nope", ip="192.0.2.7").outcome)
        clock.advance(61)
    assert outcomes[:9] == ["refused"] * 9 and outcomes[9] == "locked"
    subject, body = inbox.last_to("alice@example.com")
    assert "locked" in subject and "192.0.2.7" in body
    assert accounts.login("alice@example.com", PASSWORD).outcome == "locked"
    clock.advance(901)
    assert accounts.login("alice@example.com", PASSWORD).outcome == "need_email_code"


def test_a_served_lockout_starts_the_count_again(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    for _ in range(10):
        accounts.login("alice@example.com", "nope nope nope")
        clock.advance(61)
    clock.advance(901)
    # One more mistake after the lockout is a fresh first failure, not an instant second lockout.
    assert accounts.login("alice@example.com", "nope nope nope").outcome == "refused"
    assert accounts.login("alice@example.com", PASSWORD).outcome == "need_email_code"


def test_per_address_throttle_slows_password_spraying(accounts: Accounts, inbox) -> None:
    for i in range(21):
        accounts.login(f"user{i}@example.com", "Summer2026!", ip="198.51.100.9")
    sprayed = accounts.login("user99@example.com", "Summer2026!", ip="198.51.100.9")
    assert sprayed.outcome == "refused" and sprayed.retry_after > 0
    # Another address is not affected.
    assert accounts.login("user99@example.com", "Summer2026!", ip="198.51.100.10").retry_after == 0


def test_disabled_account_cannot_sign_in(accounts: Accounts, inbox) -> None:
    from thingward.platform import cli_actor

    make_user(accounts)
    accounts.set_disabled(cli_actor(), "alice@example.com", True)
    result = accounts.login("alice@example.com", PASSWORD)
    assert result.outcome == "refused" and result.message == "wrong email or password"


def test_security_events_are_recorded_without_secrets(accounts: Accounts, inbox, platform) -> None:
    user_id = make_user(accounts)
    secret, codes = enroll_totp(accounts, user_id)
    accounts.login("alice@example.com", "wrong guess here", ip="203.0.113.5", user_agent="curl/8")
    accounts.login("alice@example.com", PASSWORD, second_factor=codes[0])
    with platform.db.read() as session:
        actions = [e.action for e in list_events(session, limit=50)]
        everything = " ".join(e.detail + e.target + e.actor for e in session.execute(select(AuditEvent)).scalars())
    assert {"login.refused", "login.ok", "user.2fa_enable", "user.add"} <= set(actions)
    for secret_value in (PASSWORD, "wrong guess here", secret, *codes):
        assert secret_value not in everything


def test_rehash_at_sign_in_when_the_costs_change(platform, smtp, clock, inbox) -> None:
    from lab.accounts import make_accounts

    old = make_accounts(platform, smtp[1], clock)
    make_user(old)
    with platform.db.read() as session:
        from thingward.registry.models import User

        before = session.execute(select(User.password_hash)).scalar_one()
    new = make_accounts(platform, smtp[1], clock, argon2_time_cost=2)
    new.login("alice@example.com", PASSWORD)
    with platform.db.read() as session:
        after = session.execute(select(User.password_hash)).scalar_one()
    assert before != after and "t=2" in after and "t=1" in before
    assert new.login("alice@example.com", PASSWORD).outcome == "need_email_code"
