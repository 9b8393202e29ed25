"""Passwords: argon2id hashing, and the policy of NIST SP 800-63B (length, blocklist, context; no truncation).

The policy is pure: `check_password` takes the password and the words it must not be built around and
says why it is refused, so the sign-up page can show the same reasons live that the server enforces.
Passwords are NFKC-normalised (SP 800-63B 5.1.1.2) before they are checked or hashed.
"""

from __future__ import annotations

import re
import secrets
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn  # type: ignore[import-untyped]

from thingward.config import AccountsSettings
from thingward.errors import ConfigError

# zxcvbn's matching grows faster than linearly with length; its score of a long password is decided by
# its start, and the full password is still hashed and compared whole (never truncated).
_ZXCVBN_PREFIX = 72
# The shortest context word worth looking for inside a password ("bob" is too common a substring).
_MIN_CONTEXT_WORD = 4
_TRAILING_NOISE = re.compile(r"[\d\W_]+$")


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = 12
    max_length: int = 256
    min_strength: int = 3
    require_upper: bool = False
    require_lower: bool = False
    require_digit: bool = False
    require_symbol: bool = False
    product_name: str = "thingward"

    @classmethod
    def from_settings(cls, settings: AccountsSettings) -> PasswordPolicy:
        if settings.password_min_length < 8:
            raise ConfigError("[accounts] password_min_length must be at least 8 (NIST SP 800-63B)")
        if settings.password_max_length < max(64, settings.password_min_length):
            raise ConfigError("[accounts] password_max_length must be at least 64 (NIST SP 800-63B)")
        if not 0 <= settings.password_min_strength <= 4:
            raise ConfigError("[accounts] password_min_strength is a zxcvbn score, 0 to 4")
        return cls(
            min_length=settings.password_min_length,
            max_length=settings.password_max_length,
            min_strength=settings.password_min_strength,
            require_upper=settings.password_require_upper,
            require_lower=settings.password_require_lower,
            require_digit=settings.password_require_digit,
            require_symbol=settings.password_require_symbol,
            product_name=settings.product_name,
        )


@dataclass(frozen=True)
class PasswordCheck:
    """The verdict on one password: `problems` (empty when accepted), and zxcvbn's view for live feedback."""

    problems: tuple[str, ...]
    strength: int
    suggestions: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def normalize_password(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@cache
def _blocklist() -> frozenset[str]:
    text = resources.files("thingward.accounts").joinpath("data/common-passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def is_common(password: str) -> bool:
    """On the bundled list, also with digits and symbols appended ("Password2024!") or repeated."""
    lowered = normalize_password(password).lower()
    stem = _TRAILING_NOISE.sub("", lowered)
    blocked = _blocklist()
    if lowered in blocked or stem in blocked:
        return True
    # A short listed word said over and over: "dragondragondragon".
    for size in range(3, len(stem) // 2 + 1):
        if len(stem) % size == 0 and stem[:size] * (len(stem) // size) == stem and stem[:size] in blocked:
            return True
    return False


def context_words(email: str = "", name: str = "", product_name: str = "thingward") -> list[str]:
    """The words a person's password must not be built around: their email, its parts, their name, ours."""
    words = {"thingward", product_name.lower()}
    if email:
        local, _, domain = email.lower().partition("@")
        words.update({email.lower(), local, domain.split(".")[0]})
        words.update(re.split(r"[._+\-]", local))
    words.update(name.lower().split())
    return sorted((w for w in words if len(w) >= _MIN_CONTEXT_WORD), key=len, reverse=True)


def password_rules(policy: PasswordPolicy) -> list[str]:
    """The rules in words, for the page that asks for a password."""
    rules = [
        f"at least {policy.min_length} characters (up to {policy.max_length}); spaces and any characters allowed",
        "not a common or previously breached password, nor one built around your email, your name or "
        f"{policy.product_name}",
        "hard to guess: a few unrelated words make a good one",
    ]
    for wanted, what in [
        (policy.require_upper, "an upper-case letter"),
        (policy.require_lower, "a lower-case letter"),
        (policy.require_digit, "a digit"),
        (policy.require_symbol, "a symbol"),
    ]:
        if wanted:
            rules.append(f"at least {what}")
    return rules


def check_password(password: str, policy: PasswordPolicy, context: Iterable[str] = ()) -> PasswordCheck:
    """Judge a password; every reason it fails is in `problems`, worded for the person choosing it."""
    normalized = normalize_password(password)
    problems: list[str] = []
    length = len(normalized)
    if length < policy.min_length:
        problems.append(f"it has {length} characters; at least {policy.min_length} are needed")
    if length > policy.max_length:
        problems.append(f"it has {length} characters; at most {policy.max_length} are accepted")
    if normalized and is_common(normalized):
        problems.append("it is on the list of common or breached passwords")
    lowered = normalized.lower()
    words = list(context)
    leftover = lowered
    for word in words:
        leftover = leftover.replace(word, "")
    if words and leftover != lowered and len(_TRAILING_NOISE.sub("", leftover)) < policy.min_length:
        problems.append(
            f"it is built around your email, your name or the product name ({policy.product_name}); "
            "choose words that have nothing to do with them"
        )
    composition = [
        (policy.require_upper, any(c.isupper() for c in normalized), "an upper-case letter"),
        (policy.require_lower, any(c.islower() for c in normalized), "a lower-case letter"),
        (policy.require_digit, any(c.isdigit() for c in normalized), "a digit"),
        (
            policy.require_symbol,
            any(not c.isalnum() and c not in string.whitespace for c in normalized),
            "a symbol",
        ),
    ]
    for wanted, present, what in composition:
        if wanted and not present:
            problems.append(f"it needs {what}")
    strength, suggestions = 0, tuple[str, ...]()
    if normalized:
        verdict = zxcvbn(normalized[:_ZXCVBN_PREFIX], user_inputs=[*words, *_split_words(words)])
        strength = int(verdict["score"])
        feedback = verdict["feedback"]
        suggestions = tuple(str(s) for s in feedback.get("suggestions", []))
        if strength < policy.min_strength and not problems:
            warning = str(feedback.get("warning") or "").rstrip(".")
            reason = f": {warning.lower()}" if warning else ""
            problems.append(f"it is too easy to guess{reason}; a few unrelated words make a stronger one")
    return PasswordCheck(problems=tuple(problems), strength=strength, suggestions=suggestions)


def _split_words(words: Sequence[str]) -> list[str]:
    return [part for w in words for part in re.split(r"\W+", w) if part]


class PasswordHasher:
    """argon2id with the configured cost; `needs_rehash` tells when a stored hash was made with other costs."""

    def __init__(self, time_cost: int = 2, memory_kib: int = 19456, parallelism: int = 1) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=argon2.Type.ID
        )
        # Checked against when the account does not exist, so an unknown email costs the same time.
        self.dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @classmethod
    def from_settings(cls, settings: AccountsSettings) -> PasswordHasher:
        return cls(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)

    def hash(self, password: str) -> str:
        return self._hasher.hash(normalize_password(password))

    def verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, normalize_password(password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)


def generate_password(words: int = 6) -> str:
    """A random password for a new account, shown once: groups of random characters, about 120 bits."""
    alphabet = string.ascii_letters + string.digits
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(words))
