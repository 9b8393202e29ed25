"""TOTP enrolment and removal, recovery codes, the key sealed at rest, sensitive changes re-checked."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from lab.accounts import PASSWORD, enroll_totp, make_user, totp_code
from thingward.accounts import sealing
from thingward.accounts.errors import AuthenticationError
from thingward.accounts.service import Accounts
from thingward.errors import ConflictError, InvalidInputError
from thingward.registry.models import RecoveryCode, User


def test_enrolment_gives_a_qr_code_and_needs_a_first_code(accounts: Accounts, clock) -> None:
    user_id = make_user(accounts)
    enrolment = accounts.begin_totp(user_id)
    assert enrolment.uri.startswith("otpauth://totp/") and "issuer=thingward" in enrolment.uri
    assert enrolment.qr_svg.startswith("<svg") and "<script" not in enrolment.qr_svg
    with pytest.raises(AuthenticationError):
        accounts.confirm_totp(user_id, "000000" if totp_code(enrolment.secret, accounts) != "000000" else "111111")
    assert not accounts.get_user_by_id(user_id).totp_enabled  # still off until a right code
    codes, _ = accounts.confirm_totp(user_id, totp_code(enrolment.secret, accounts))
    assert accounts.get_user_by_id(user_id).totp_enabled and len(codes) == 10


def test_confirming_with_a_session_gives_that_session_a_new_id(accounts: Accounts, inbox) -> None:
    from lab.accounts import signed_in

    user_id = make_user(accounts)
    old = signed_in(accounts, inbox).session_token
    assert old
    enrolment = accounts.begin_totp(user_id)
    _, new = accounts.confirm_totp(user_id, totp_code(enrolment.secret, accounts), session_token=old)
    assert new and new != old
    assert accounts.authenticate_session(old) is None
    assert accounts.authenticate_session(new) is not None


def test_the_totp_key_and_recovery_codes_are_not_stored_in_the_clear(accounts: Accounts, platform) -> None:
    user_id = make_user(accounts)
    secret, codes = enroll_totp(accounts, user_id)
    with platform.db.read() as session:
        user = session.get(User, user_id)
        assert user is not None and user.totp_secret_sealed
        assert secret.encode() not in user.totp_secret_sealed
        stored = session.execute(select(RecoveryCode.code_sha256)).scalars().all()
        assert len(stored) == 10 and not set(codes) & set(stored)
        # The sealed key opens only for its own user.
        key = sealing.sealing_key(session)
        assert sealing.unseal(key, user_id, user.totp_secret_sealed) == secret
        with pytest.raises(Exception, match="does not open"):
            sealing.unseal(key, user_id + 1, user.totp_secret_sealed)
    db_file = platform.settings.data_dir / "thingward.db"
    for path in [db_file, db_file.with_name("thingward.db-wal")]:
        if path.exists():
            assert secret.encode() not in path.read_bytes()


def test_disabling_2fa_needs_the_password_and_a_current_code(accounts: Accounts, clock, inbox) -> None:
    user_id = make_user(accounts)
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(30)
    with pytest.raises(AuthenticationError):
        accounts.disable_totp(user_id, "not my password", totp_code(secret, accounts))
    with pytest.raises(AuthenticationError):
        accounts.disable_totp(user_id, PASSWORD, "123456" if totp_code(secret, accounts) != "123456" else "654321")
    assert accounts.get_user_by_id(user_id).totp_enabled
    accounts.disable_totp(user_id, PASSWORD, totp_code(secret, accounts))
    assert not accounts.get_user_by_id(user_id).totp_enabled
    assert "turned off" in inbox.last_to("alice@example.com")[0]


def test_renewed_recovery_codes_void_the_old_ones(accounts: Accounts, clock) -> None:
    user_id = make_user(accounts)
    secret, old_codes = enroll_totp(accounts, user_id)
    clock.advance(30)
    new_codes = accounts.regenerate_recovery_codes(user_id, PASSWORD, totp_code(secret, accounts))
    assert accounts.login("alice@example.com", PASSWORD, second_factor=old_codes[0]).outcome == "refused"
    assert accounts.login("alice@example.com", PASSWORD, second_factor=new_codes[0]).outcome == "ok"


def test_email_change_needs_password_and_code_and_tells_both_addresses(accounts: Accounts, clock, inbox) -> None:
    user_id = make_user(accounts)
    make_user(accounts, "bob@example.com")
    secret, _ = enroll_totp(accounts, user_id)
    clock.advance(30)
    with pytest.raises(AuthenticationError):
        accounts.change_email(user_id, PASSWORD, None, "alice@new.example")
    with pytest.raises(AuthenticationError):
        accounts.change_email(user_id, "wrong password", totp_code(secret, accounts), "alice@new.example")
    with pytest.raises(ConflictError):
        accounts.change_email(user_id, PASSWORD, totp_code(secret, accounts), "bob@example.com")
    clock.advance(30)
    info = accounts.change_email(user_id, PASSWORD, totp_code(secret, accounts), "Alice@New.Example")
    assert info.email == "alice@new.example"
    assert inbox.to("alice@example.com")[-1][0].endswith("Your sign-in email was changed")
    assert inbox.to("alice@new.example")[-1][0].endswith("Your sign-in email was changed")
    with pytest.raises(InvalidInputError):
        accounts.change_email(user_id, PASSWORD, None, "not-an-email")


def test_admins_must_enrol_2fa_by_default(accounts: Accounts, inbox) -> None:
    admin_id = make_user(accounts, "root@example.com", admin=True)
    make_user(accounts)
    from lab.accounts import signed_in

    admin = signed_in(accounts, inbox, "root@example.com")
    assert admin.requirements == ("enroll_2fa",)
    assert signed_in(accounts, inbox).requirements == ()
    enroll_totp(accounts, admin_id)
    assert accounts.requirements(accounts.get_user_by_id(admin_id)) == ()


def test_everyone_must_enrol_2fa_when_configured(platform, smtp, clock, inbox) -> None:
    from lab.accounts import make_accounts

    strict = make_accounts(platform, smtp[1], clock, require_2fa_everyone=True)
    user_id = make_user(strict)
    assert strict.requirements(strict.get_user_by_id(user_id)) == ("enroll_2fa",)
