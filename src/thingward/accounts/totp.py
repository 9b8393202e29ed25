"""Time-based one-time passwords (RFC 6238): 30 s steps, six digits, one step of drift either way.

`match_step` returns the step a code belongs to; the caller stores it and refuses that step and every
older one afterwards, so a code seen over a shoulder or replayed from a log is worth nothing.
Recovery codes have 79 random bits each (16 characters of 31), so a plain SHA-256 is enough to store them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

import pyotp
import segno

STEP_SECONDS = 30
DIGITS = 6
MAX_DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud and typed by people


def new_secret() -> str:
    return pyotp.random_base32(32)  # 160 bits, the size RFC 4226 recommends


def step_at(now: dt.datetime) -> int:
    return int(now.timestamp()) // STEP_SECONDS


def code_at_step(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def match_step(secret: str, code: str, now: dt.datetime, after_step: int | None) -> int | None:
    """The step (now, one before or one after) whose code this is, if it is newer than `after_step`."""
    cleaned = code.replace(" ", "").strip()
    # ASCII only: fullwidth or Arabic-Indic digits pass str.isdigit, and hmac.compare_digest raises on them.
    if len(cleaned) != DIGITS or not cleaned.isascii() or not cleaned.isdigit():
        return None
    current = step_at(now)
    found = None
    # Every candidate is compared, in constant time, so the timing does not tell which step matched.
    for step in range(current - MAX_DRIFT_STEPS, current + MAX_DRIFT_STEPS + 1):
        if hmac.compare_digest(code_at_step(secret, step), cleaned) and (after_step is None or step > after_step):
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=account, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    """An inline SVG of the otpauth URI, for the enrolment page (no external image, no script)."""
    return str(segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff"))


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    return [
        "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(4)) for _ in range(4)) for _ in range(count)
    ]


def looks_like_recovery_code(value: str) -> bool:
    return len(normalize_recovery_code(value)) == 16


def normalize_recovery_code(value: str) -> str:
    return value.strip().lower().replace("-", "").replace(" ", "")


def recovery_code_digest(code: str) -> str:
    return hashlib.sha256(normalize_recovery_code(code).encode()).hexdigest()
