"""The password policy (NIST SP 800-63B) and argon2id hashing."""

from __future__ import annotations

import pytest

from thingward.accounts.passwords import (
    PasswordHasher,
    PasswordPolicy,
    check_password,
    context_words,
    generate_password,
    is_common,
    password_rules,
)
from thingward.config import AccountsSettings
from thingward.errors import ConfigError

POLICY = PasswordPolicy()
ALICE = context_words("alice.smith@example.com", "Alice Smith", "Camguard")


def problems(password: str, policy: PasswordPolicy = POLICY) -> str:
    return " | ".join(check_password(password, policy, ALICE).problems)


def test_a_strong_passphrase_is_accepted() -> None:
    verdict = check_password("tangerine harpsichord velvet", POLICY, ALICE)
    assert verdict.ok and verdict.strength >= 3


def test_too_short_is_refused_with_the_count() -> None:
    assert "it has 9 characters; at least 12 are needed" in problems("x7#Kp!2qZ")


@pytest.mark.parametrize(
    "password",
    ["correcthorsebatterystaple", "Password2024!!!", "qwertyuiop123", "dragondragondragon", "iloveyouforever"],
)
def test_common_and_breached_style_passwords_are_refused(password: str) -> None:
    assert "common or breached" in problems(password)


@pytest.mark.parametrize(
    "password", ["alice.smith@example.com!", "AliceSmith2026!!", "camguard-camguard", "thingward-2026!"]
)
def test_passwords_built_around_the_email_name_or_product_are_refused(password: str) -> None:
    assert "built around your email, your name or the product name" in problems(password)


def test_a_context_word_inside_a_long_passphrase_is_fine() -> None:
    assert check_password("alice rides a purple elephant to work", POLICY, ALICE).ok


def test_guessable_patterns_are_refused_by_zxcvbn_with_its_warning() -> None:
    assert "too easy to guess" in problems("aaaaaaaaaaaaaaaa")


def test_64_characters_and_any_characters_are_allowed() -> None:
    long_one = "Grüße aus Köln 🐈 " * 4 + "und ein paar Wörter dazu, bitte"
    assert len(long_one) >= 64
    assert check_password(long_one, POLICY, ALICE).ok


def test_the_maximum_is_at_least_64_and_says_so_when_passed() -> None:
    assert "at most 256" in problems("k" * 300)
    with pytest.raises(ConfigError, match="at least 64"):
        PasswordPolicy.from_settings(AccountsSettings(password_max_length=32))
    with pytest.raises(ConfigError, match="at least 8"):
        PasswordPolicy.from_settings(AccountsSettings(password_min_length=6))


def test_composition_rules_are_off_by_default_and_enforced_when_set() -> None:
    assert check_password("tangerine harpsichord velvet", POLICY, ALICE).ok
    strict = PasswordPolicy(require_upper=True, require_digit=True, require_symbol=True)
    text = problems("tangerine harpsichord velvet", strict)
    assert "an upper-case letter" in text and "a digit" in text and "a symbol" in text
    assert check_password("Tangerine harpsichord velvet 7!", strict, ALICE).ok
    assert any("upper-case" in rule for rule in password_rules(strict))
    assert not any("upper-case" in rule for rule in password_rules(POLICY))


def test_rules_are_stated_for_the_page() -> None:
    rules = password_rules(POLICY)
    assert any("at least 12 characters" in r for r in rules)
    assert any("common or previously breached" in r for r in rules)


def test_blocklist_ignores_case_and_trailing_digits_and_symbols() -> None:
    assert is_common("LetMeIn2026!!")
    assert not is_common("tangerine harpsichord velvet")


def test_generated_passwords_pass_the_policy() -> None:
    for _ in range(20):
        assert check_password(generate_password(), POLICY, ALICE).ok


def test_no_truncation_every_character_counts() -> None:
    hasher = PasswordHasher(time_cost=1, memory_kib=8192, parallelism=1)
    password = "w" * 100 + "tail"
    stored = hasher.hash(password)
    assert hasher.verify(stored, password)
    assert not hasher.verify(stored, "w" * 100)
    assert not hasher.verify(stored, password[:72])


def test_unicode_is_normalised_nfkc() -> None:
    hasher = PasswordHasher(time_cost=1, memory_kib=8192, parallelism=1)
    stored = hasher.hash("ﬁsh and chips please")  # the "ﬁ" ligature
    assert hasher.verify(stored, "fish and chips please")


def test_hash_is_argon2id_and_a_cost_change_asks_for_a_rehash() -> None:
    old = PasswordHasher(time_cost=1, memory_kib=8192, parallelism=1)
    stored = old.hash("tangerine harpsichord velvet")
    assert stored.startswith("$argon2id$")
    assert not old.needs_rehash(stored)
    assert PasswordHasher(time_cost=2, memory_kib=8192, parallelism=1).needs_rehash(stored)


def test_a_garbage_hash_verifies_nothing() -> None:
    hasher = PasswordHasher(time_cost=1, memory_kib=8192, parallelism=1)
    assert not hasher.verify("not-a-hash", "anything")
