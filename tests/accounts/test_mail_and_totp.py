"""Mail through a real SMTP server (and the refusals when it cannot be sent); TOTP step arithmetic."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thingward.accounts import totp
from thingward.accounts.mail import Mail, MailError, NoMailer, QueuedMailer, SmtpMailer
from thingward.errors import ConfigError


def test_smtp_mail_arrives(smtp) -> None:
    inbox, settings = smtp
    SmtpMailer(settings).send(Mail("alice@example.com", "hello", "body text"))
    assert inbox.last_to("alice@example.com") == ("hello", "body text\r\n")


def test_starttls_is_required_by_default_and_a_server_without_it_is_refused(smtp) -> None:
    inbox, settings = smtp
    with pytest.raises(MailError, match="not sent"):
        SmtpMailer(dataclasses.replace(settings, security="starttls")).send(Mail("a@example.com", "s", "b"))
    assert not inbox.to("a@example.com")


def test_bad_settings_say_what_to_fix() -> None:
    from thingward.config import SmtpSettings

    with pytest.raises(ConfigError, match="security must be"):
        SmtpMailer(SmtpSettings(host="127.0.0.1", security="ssl3"))
    with pytest.raises(MailError, match=r"\[smtp\] host"):
        NoMailer().send(Mail("a@example.com", "s", "b"))


def test_queued_mailer_sends_in_the_background_and_survives_a_failure(smtp) -> None:
    inbox, settings = smtp
    dead = dataclasses.replace(settings, port=1)  # nothing listens on port 1 of loopback
    broken = QueuedMailer(SmtpMailer(dead))
    good = QueuedMailer(SmtpMailer(settings))
    try:
        broken.send(Mail("x@example.com", "s", "b"))
        assert broken.flush(10)
        for i in range(3):
            good.send(Mail("q@example.com", f"n{i}", "b"))
        assert good.flush(10)
        assert [subject for subject, _ in inbox.to("q@example.com")] == ["n0", "n1", "n2"]
    finally:
        broken.close()
        good.close()


NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)


@given(offset=st.integers(min_value=-5, max_value=5), seconds=st.integers(min_value=0, max_value=29))
def test_only_one_step_of_drift_is_accepted(offset: int, seconds: int) -> None:
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    now = NOW + dt.timedelta(seconds=seconds)
    code = pyotp.TOTP(secret).at(now.timestamp() + 30 * offset)
    step = totp.match_step(secret, code, now, None)
    if abs(offset) <= 1:
        assert step == totp.step_at(now) + offset
    else:
        # A code of a far step may collide with a near one by chance (1 in 10^6); it never maps to a far step.
        assert step is None or abs(step - totp.step_at(now)) <= 1


def test_a_step_at_or_before_the_last_used_one_is_refused() -> None:
    secret = totp.new_secret()
    step = totp.step_at(NOW)
    code = totp.code_at_step(secret, step)
    assert totp.match_step(secret, code, NOW, step - 1) == step
    assert totp.match_step(secret, code, NOW, step) is None
    assert totp.match_step(secret, "12345", NOW, None) is None
    assert totp.match_step(secret, "abcdef", NOW, None) is None


def test_recovery_codes_are_distinct_and_normalised() -> None:
    codes = totp.new_recovery_codes()
    assert len(set(codes)) == 10 and all(totp.looks_like_recovery_code(c) for c in codes)
    assert totp.recovery_code_digest(codes[0].upper().replace("-", " ")) == totp.recovery_code_digest(codes[0])
