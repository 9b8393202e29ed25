"""Password change and reset by mailed link, invitations and sign-up, over a real SMTP server."""

from __future__ import annotations

import re
import statistics
import time

import pytest
from sqlalchemy import select

from lab.accounts import PASSWORD, make_user, signed_in
from thingward.accounts.errors import AuthenticationError, InvalidTokenError, SignUpClosedError, WeakPasswordError
from thingward.accounts.mail import QueuedMailer, SmtpMailer
from thingward.accounts.service import Accounts
from thingward.errors import ConflictError
from thingward.platform import cli_actor
from thingward.registry.audit_log import list_events
from thingward.registry.models import OneTimeToken

NEW_PASSWORD = "marmalade lighthouse octopus"


def reset_token(inbox, email: str = "alice@example.com") -> str:
    subject, body = inbox.last_to(email)
    assert "Reset" in subject
    match = re.search(r"/reset\?token=(\S+)", body)
    assert match
    return match.group(1)


def test_reset_by_mailed_link_ends_sessions_and_works_once(accounts: Accounts, inbox, platform) -> None:
    make_user(accounts)
    session_token = signed_in(accounts, inbox).session_token
    accounts.request_password_reset("Alice@Example.com", ip="127.0.0.1")
    token = reset_token(inbox)
    with platform.db.read() as session:  # stored hashed only
        assert token not in session.execute(select(OneTimeToken.token_sha256)).scalars().all()
    accounts.reset_password(token, NEW_PASSWORD, ip="127.0.0.1")
    assert accounts.authenticate_session(session_token or "") is None
    assert accounts.login("alice@example.com", PASSWORD).outcome == "refused"
    assert accounts.login("alice@example.com", NEW_PASSWORD).outcome == "need_email_code"
    with pytest.raises(InvalidTokenError):
        accounts.reset_password(token, "another fine passphrase here")


def test_expired_reset_token_is_refused(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    accounts.request_password_reset("alice@example.com")
    token = reset_token(inbox)
    clock.advance(3601)
    with pytest.raises(InvalidTokenError, match="not valid"):
        accounts.reset_password(token, NEW_PASSWORD)
    assert accounts.login("alice@example.com", PASSWORD).outcome == "need_email_code"


def test_made_up_reset_token_is_refused_and_recorded(accounts: Accounts, platform) -> None:
    with pytest.raises(InvalidTokenError):
        accounts.reset_password("made-up-token", NEW_PASSWORD)
    with platform.db.read() as session:
        assert list_events(session, limit=1)[0].action == "user.reset_refused"


def test_reset_refuses_a_weak_password_and_keeps_the_token(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    accounts.request_password_reset("alice@example.com")
    token = reset_token(inbox)
    with pytest.raises(WeakPasswordError, match="common or breached"):
        accounts.reset_password(token, "Password2026!!")
    accounts.reset_password(token, NEW_PASSWORD)


def test_reset_lifts_a_lockout(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    for _ in range(10):
        accounts.login("alice@example.com", "nope nope nope")
        clock.advance(61)
    assert accounts.login("alice@example.com", PASSWORD).outcome == "locked"
    accounts.request_password_reset("alice@example.com")
    accounts.reset_password(reset_token(inbox), NEW_PASSWORD)
    assert accounts.login("alice@example.com", NEW_PASSWORD).outcome == "need_email_code"


def test_reset_request_for_an_unknown_email_looks_the_same(platform, smtp, clock) -> None:
    from lab.accounts import FAST

    inbox, settings = smtp
    mailer = QueuedMailer(SmtpMailer(settings))
    accounts = Accounts(platform.db, FAST, mailer, clock)
    try:
        make_user(accounts)

        def timed(email: str) -> float:
            start = time.perf_counter()
            assert accounts.request_password_reset(email, ip="127.0.0.1") is None
            return time.perf_counter() - start

        known_times, unknown_times = [], []
        for _ in range(5):  # interleaved, so background mail work weighs on both alike
            known_times.append(timed("alice@example.com"))
            unknown_times.append(timed("nobody@example.com"))
        assert mailer.flush(10)
        assert len(inbox.to("alice@example.com")) == 5 and not inbox.to("nobody@example.com")
        # The lookup and the mail happen on the queue's thread: the request costs the same either way.
        known, unknown = statistics.median(known_times), statistics.median(unknown_times)
        assert known < unknown * 2 + 0.01 and unknown < known * 2 + 0.01, (known, unknown)
        with platform.db.read() as session:
            requests = [e for e in list_events(session, limit=100) if e.action == "user.reset_request"]
        # The request's own audit event has the same shape for both; only the address differs.
        assert {(e.action, e.target, e.actor) for e in requests} == {
            ("user.reset_request", "password_reset", "anonymous")
        }
    finally:
        mailer.close()


def test_change_password_needs_the_current_one_and_ends_other_sessions(accounts: Accounts, inbox) -> None:
    user_id = make_user(accounts)
    here = signed_in(accounts, inbox, ua="here").session_token or ""
    there = signed_in(accounts, inbox, ua="there").session_token or ""
    with pytest.raises(AuthenticationError):
        accounts.change_password(user_id, "not the password", NEW_PASSWORD, here)
    with pytest.raises(WeakPasswordError, match="at least 12"):
        accounts.change_password(user_id, PASSWORD, "short", here)
    assert accounts.change_password(user_id, PASSWORD, NEW_PASSWORD, keep_session_token=here) == 1
    assert accounts.authenticate_session(here) is not None
    assert accounts.authenticate_session(there) is None
    assert "password was changed" in inbox.last_to("alice@example.com")[0]


def test_generated_first_password_signs_in_once_and_must_be_changed(accounts: Accounts, inbox) -> None:
    info, generated = accounts.create_user(cli_actor(), "admin@example.com", admin=True)
    assert generated and info.must_change_password
    # The first browser needs no mailed code: the password shown once on the console is that secret.
    result = accounts.login("admin@example.com", generated)
    assert result.outcome == "ok" and result.requirements == ("change_password", "enroll_2fa")
    assert "New sign-in" in inbox.last_to("admin@example.com")[0]
    # A second new browser before the change is verified as usual.
    assert accounts.login("admin@example.com", generated, user_agent="other").outcome == "need_email_code"
    accounts.change_password(info.id, generated, NEW_PASSWORD, result.session_token)
    assert not accounts.get_user_by_id(info.id).must_change_password
    assert accounts.login("admin@example.com", generated).outcome == "refused"


def test_no_account_with_a_weak_password(accounts: Accounts) -> None:
    with pytest.raises(WeakPasswordError, match="built around your email"):
        accounts.create_user(cli_actor(), "carol.jones@example.com", "carol.jones2026!")


def test_invite_only_sign_up_refuses_without_a_valid_invitation(accounts: Accounts, inbox, clock) -> None:
    with pytest.raises(SignUpClosedError):
        accounts.sign_up("dave@example.com", PASSWORD)
    token = accounts.invite(cli_actor(), "dave@example.com")
    assert token in inbox.last_to("dave@example.com")[1]
    with pytest.raises(SignUpClosedError):  # bound to the invited address
        accounts.sign_up("mallory@example.com", PASSWORD, invite_token=token)
    with pytest.raises(WeakPasswordError):  # a weak password costs the invitation nothing
        accounts.sign_up("dave@example.com", "password1234", invite_token=token)
    info = accounts.sign_up("dave@example.com", PASSWORD, invite_token=token, name="Dave")
    assert info.email == "dave@example.com" and not info.is_admin
    with pytest.raises(SignUpClosedError):  # single use
        accounts.sign_up("dave@example.com", PASSWORD, invite_token=token)


def test_expired_invitation_is_refused(accounts: Accounts, inbox, clock) -> None:
    token = accounts.invite(cli_actor(), "erin@example.com")
    clock.advance(7 * 86400 + 1)
    with pytest.raises(SignUpClosedError):
        accounts.sign_up("erin@example.com", PASSWORD, invite_token=token)


def test_open_sign_up_when_configured(platform, smtp, clock) -> None:
    from lab.accounts import make_accounts

    accounts = make_accounts(platform, smtp[1], clock, signup="open")
    accounts.sign_up("frank@example.com", PASSWORD)
    with pytest.raises(ConflictError):
        accounts.sign_up("frank@example.com", NEW_PASSWORD)


def test_operator_reset_ends_sessions_lifts_lockout_and_voids_the_old_password(
    accounts: Accounts, inbox, clock
) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    for _ in range(10):
        accounts.login("alice@example.com", "nope nope nope")
        clock.advance(61)
    new = accounts.admin_reset_password(cli_actor(), "alice@example.com")
    assert accounts.authenticate_session(token) is None
    assert accounts.login("alice@example.com", PASSWORD).outcome == "refused"
    clock.advance(61)
    result = accounts.login("alice@example.com", new)
    assert result.outcome == "need_email_code"  # a known account's new browser is still verified
    assert "reset by an administrator" in inbox.to("alice@example.com")[-2][0]
