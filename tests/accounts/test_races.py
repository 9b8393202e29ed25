"""Parallel requests cannot dodge the throttle or use one single-use secret twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lab.accounts import PASSWORD, enroll_totp, make_user, totp_code
from thingward.accounts.service import Accounts


def test_a_burst_of_parallel_guesses_gets_no_more_tries_than_a_sequence(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: accounts.login("alice@example.com", f"guess number {i}"), range(16)))
    checked = [r for r in results if r.retry_after == 0]
    # Three free failures and the fourth that starts the delay: the clock stands still, so no more.
    assert len(checked) == 4, [(r.outcome, r.retry_after) for r in results]


def test_one_totp_code_sent_twice_at_once_signs_in_once(accounts: Accounts, inbox, clock) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(30)
    code = totp_code(secret, accounts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: accounts.login("alice@example.com", PASSWORD, second_factor=code), range(4)))
    assert sorted(r.outcome for r in results).count("ok") == 1


def test_one_recovery_code_sent_twice_at_once_signs_in_once(accounts: Accounts, inbox) -> None:
    user_id = make_user(accounts)
    _, codes = enroll_totp(accounts, user_id)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda _: accounts.login("alice@example.com", PASSWORD, second_factor=codes[0]), range(4))
        )
    assert [r.outcome for r in results].count("ok") == 1
