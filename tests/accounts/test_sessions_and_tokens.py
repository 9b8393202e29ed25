"""Server-side sessions (hashed ids, idle and absolute expiry, listing, ending) and scoped API tokens."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from lab.accounts import PASSWORD, enroll_totp, make_user, signed_in
from thingward.accounts.errors import InvalidTokenError, PermissionDeniedError
from thingward.accounts.service import Accounts
from thingward.errors import InvalidInputError, NotFoundError
from thingward.platform import cli_actor
from thingward.registry.models import ApiToken, UserSession


def test_session_ids_are_256_bit_and_stored_hashed(accounts: Accounts, inbox, platform) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    assert len(token) >= 43  # 32 random bytes, URL-safe base64
    with platform.db.read() as session:
        stored = session.execute(select(UserSession.token_sha256)).scalars().all()
    assert stored and token not in stored
    # The stored digest itself is not a session id.
    assert accounts.authenticate_session(stored[0]) is None
    who = accounts.authenticate_session(token)
    assert who is not None and who.user.email == "alice@example.com"


def test_idle_timeout(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    clock.advance(1700)
    assert accounts.authenticate_session(token) is not None  # activity keeps it alive
    clock.advance(1700)
    assert accounts.authenticate_session(token) is not None
    clock.advance(1801)
    assert accounts.authenticate_session(token) is None


def test_absolute_lifetime_even_when_active(accounts: Accounts, inbox, clock) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    started = clock.now
    for _ in range(30):  # steady use, never idle for long
        clock.advance(1799)
        if accounts.authenticate_session(token) is None:
            break
    else:
        pytest.fail("the session outlived its 12 h lifetime")
    assert 43200 <= (clock.now - started).total_seconds() < 43200 + 1799


def test_list_and_end_sessions_and_someone_elses_is_not_found(accounts: Accounts, inbox) -> None:
    alice_id = make_user(accounts)
    bob_id = make_user(accounts, "bob@example.com")
    laptop = signed_in(accounts, inbox, ua="laptop").session_token or ""
    phone = signed_in(accounts, inbox, ua="phone").session_token or ""
    bob = signed_in(accounts, inbox, "bob@example.com").session_token or ""
    sessions = accounts.list_sessions(alice_id, current_token=laptop)
    assert [(s.user_agent, s.current) for s in sessions] == [("laptop", True), ("phone", False)]
    phone_id = sessions[1].id
    bob_session = accounts.list_sessions(bob_id)[0].id
    with pytest.raises(NotFoundError):
        accounts.end_session(alice_id, bob_session)
    assert accounts.authenticate_session(bob) is not None
    accounts.end_session(alice_id, phone_id)
    assert accounts.authenticate_session(phone) is None
    assert accounts.authenticate_session(laptop) is not None


def test_logout_and_rotation(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    new = accounts.rotate_session(token)
    assert new and accounts.authenticate_session(token) is None and accounts.authenticate_session(new)
    assert accounts.logout(new)
    assert accounts.authenticate_session(new) is None
    assert not accounts.logout(new)


def test_disabling_or_promoting_a_user_ends_their_sessions(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    token = signed_in(accounts, inbox).session_token or ""
    accounts.set_admin(cli_actor(), "alice@example.com", True)
    assert accounts.authenticate_session(token) is None
    token = signed_in(accounts, inbox, ua="again").session_token or ""
    accounts.set_disabled(cli_actor(), "alice@example.com", True)
    assert accounts.authenticate_session(token) is None


def test_api_token_scope_is_enforced(accounts: Accounts, platform) -> None:
    user_id = make_user(accounts)
    new = accounts.create_api_token(user_id, "grafana", ["things:read"], days=30)
    assert new.token.startswith("twk_")
    with platform.db.read() as session:
        assert new.token not in session.execute(select(ApiToken.token_sha256)).scalars().all()
    assert accounts.authenticate_api_token(new.token, "things:read").email == "alice@example.com"
    with pytest.raises(PermissionDeniedError, match="things:control"):
        accounts.authenticate_api_token(new.token, "things:control")
    with pytest.raises(InvalidTokenError):
        accounts.authenticate_api_token(new.token + "x", "things:read")


def test_api_token_expires_and_can_be_revoked(accounts: Accounts, clock) -> None:
    user_id = make_user(accounts)
    short = accounts.create_api_token(user_id, "ci", ["things:read"], days=1)
    other = accounts.create_api_token(user_id, "backup", ["things:read"], days=30)
    clock.advance(86401)
    with pytest.raises(InvalidTokenError):
        accounts.authenticate_api_token(short.token, "things:read")
    accounts.revoke_api_token(user_id, other.info.id)
    with pytest.raises(InvalidTokenError):
        accounts.authenticate_api_token(other.token, "things:read")
    assert [t.revoked for t in accounts.list_api_tokens(user_id)] == [False, True]


def test_api_token_limits(accounts: Accounts) -> None:
    user_id = make_user(accounts)
    with pytest.raises(InvalidInputError, match="unknown or missing scope"):
        accounts.create_api_token(user_id, "x", ["things:everything"])
    with pytest.raises(InvalidInputError, match="1 to 365 days"):
        accounts.create_api_token(user_id, "x", ["things:read"], days=1000)
    with pytest.raises(PermissionDeniedError):  # no admin scope for a non-admin
        accounts.create_api_token(user_id, "x", ["admin"])


def test_api_token_of_a_disabled_or_demoted_user_stops_working(accounts: Accounts) -> None:
    admin_id = make_user(accounts, "root@example.com", admin=True)
    token = accounts.create_api_token(admin_id, "ops", ["admin", "things:read"]).token
    with pytest.raises(PermissionDeniedError, match="enroll_2fa"):  # admins must use 2FA, tokens too
        accounts.authenticate_api_token(token, "admin")
    enroll_totp(accounts, admin_id)
    assert accounts.authenticate_api_token(token, "admin").is_admin
    accounts.set_admin(cli_actor(), "root@example.com", False)
    with pytest.raises(PermissionDeniedError):
        accounts.authenticate_api_token(token, "admin")
    accounts.set_disabled(cli_actor(), "root@example.com", True)
    with pytest.raises(InvalidTokenError):
        accounts.authenticate_api_token(token, "things:read")


def test_password_is_not_an_api_token(accounts: Accounts) -> None:
    make_user(accounts)
    with pytest.raises(InvalidTokenError):
        accounts.authenticate_api_token(PASSWORD, "things:read")


def test_csrf_token_is_bound_to_the_session_and_changes_with_its_id(accounts: Accounts, inbox) -> None:
    make_user(accounts)
    make_user(accounts, "bob@example.com")
    alice = signed_in(accounts, inbox).session_token or ""
    bob = signed_in(accounts, inbox, "bob@example.com").session_token or ""
    token = accounts.csrf_token(alice)
    assert accounts.check_csrf(alice, token)
    assert not accounts.check_csrf(alice, accounts.csrf_token(bob))  # another session's token
    assert not accounts.check_csrf(alice, None) and not accounts.check_csrf(alice, "")
    assert not accounts.check_csrf(alice, token[:-1] + ("0" if token[-1] != "0" else "1"))
    rotated = accounts.rotate_session(alice) or ""
    assert not accounts.check_csrf(rotated, token)
