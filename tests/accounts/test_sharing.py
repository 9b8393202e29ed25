"""Things shared with user groups: a household sees its own cameras and never another's."""

from __future__ import annotations

import pytest

from lab.accounts import make_user
from thingward.accounts import sharing
from thingward.accounts.service import Accounts
from thingward.errors import ConflictError, InvalidInputError, NotFoundError
from thingward.platform import cli_actor
from thingward.registry import things
from thingward.registry.models import User


@pytest.fixture
def homes(accounts: Accounts, platform):
    """Two households, a support team, three cameras; returns a function to load a user in a session."""
    for email in ("alice@example.com", "bob@example.com", "carol@example.com", "sam@example.com"):
        make_user(accounts, email)
    make_user(accounts, "root@example.com", admin=True)
    actor = cli_actor()
    with platform.db.session() as session:
        for name in ("alice-door", "alice-garden", "bob-door"):
            things.add_thing(session, actor, name)
        for group in ("smiths", "joneses", "support"):
            sharing.add_user_group(session, actor, group)
        by_email = {u.email: u for u in session.query(User)}
        sharing.add_member(session, actor, "smiths", by_email["alice@example.com"])
        sharing.add_member(session, actor, "smiths", by_email["carol@example.com"])
        sharing.add_member(session, actor, "joneses", by_email["bob@example.com"])
        sharing.add_member(session, actor, "support", by_email["sam@example.com"])
        sharing.share_thing(session, actor, "alice-door", "smiths", "owner")
        sharing.share_thing(session, actor, "alice-garden", "smiths", "owner")
        sharing.share_thing(session, actor, "bob-door", "joneses", "owner")
        sharing.share_thing(session, actor, "bob-door", "support", "viewer")
    return platform


def user(session, email: str) -> User:
    return session.query(User).filter(User.email == email).one()


def visible(session, email: str) -> list[str]:
    return [t.name for t in sharing.visible_things(session, user(session, email))]


def test_each_household_sees_only_its_own_things(homes) -> None:
    with homes.db.read() as session:
        assert visible(session, "alice@example.com") == ["alice-door", "alice-garden"]
        assert visible(session, "carol@example.com") == ["alice-door", "alice-garden"]
        assert visible(session, "bob@example.com") == ["bob-door"]
        assert visible(session, "sam@example.com") == ["bob-door"]
        assert visible(session, "root@example.com") == ["alice-door", "alice-garden", "bob-door"]


def test_another_households_thing_is_indistinguishable_from_a_missing_one(homes) -> None:
    with homes.db.read() as session:
        bob = user(session, "bob@example.com")
        with pytest.raises(NotFoundError) as theirs:
            sharing.get_visible_thing(session, bob, "alice-door")
        with pytest.raises(NotFoundError) as missing:
            sharing.get_visible_thing(session, bob, "alice-doors")
        assert str(theirs.value).replace("alice-door", "X") == str(missing.value).replace("alice-doors", "X")
        assert not sharing.can_view(session, bob, things.get_thing(session, "alice-door"))
        assert sharing.get_visible_thing(session, bob, "bob-door").name == "bob-door"


def test_a_viewer_may_see_but_not_control(homes) -> None:
    with homes.db.read() as session:
        sam = user(session, "sam@example.com")
        door = things.get_thing(session, "bob-door")
        assert sharing.can_view(session, sam, door) and not sharing.can_control(session, sam, door)
        with pytest.raises(NotFoundError):
            sharing.get_visible_thing(session, sam, "bob-door", control=True)
        bob = user(session, "bob@example.com")
        assert sharing.can_control(session, bob, door)


def test_leaving_the_household_takes_the_things_away(homes) -> None:
    with homes.db.session() as session:
        sharing.remove_member(session, cli_actor(), "smiths", user(session, "carol@example.com"))
    with homes.db.read() as session:
        assert visible(session, "carol@example.com") == []


def test_a_disabled_user_sees_nothing(homes, accounts: Accounts) -> None:
    accounts.set_disabled(cli_actor(), "alice@example.com", True)
    with homes.db.read() as session:
        alice = user(session, "alice@example.com")
        assert visible(session, "alice@example.com") == []
        assert not sharing.can_view(session, alice, things.get_thing(session, "alice-door"))


def test_unsharing_and_role_changes(homes) -> None:
    with homes.db.session() as session:
        sharing.share_thing(session, cli_actor(), "bob-door", "support", "owner")
        assert sharing.shares_of(session, things.get_thing(session, "bob-door")) == [
            ("joneses", "owner"),
            ("support", "owner"),
        ]
        sharing.unshare_thing(session, cli_actor(), "bob-door", "support")
        with pytest.raises(NotFoundError):
            sharing.unshare_thing(session, cli_actor(), "bob-door", "support")
    with homes.db.read() as session:
        assert visible(session, "sam@example.com") == []


def test_bad_input_is_refused_clearly(homes) -> None:
    with homes.db.session() as session:
        with pytest.raises(InvalidInputError, match="role must be one of owner, viewer"):
            sharing.share_thing(session, cli_actor(), "bob-door", "support", "admin")
        with pytest.raises(ConflictError):
            sharing.add_user_group(session, cli_actor(), "smiths")
        with pytest.raises(ConflictError):
            sharing.add_member(session, cli_actor(), "smiths", user(session, "alice@example.com"))
        with pytest.raises(NotFoundError, match="no user group"):
            sharing.share_thing(session, cli_actor(), "bob-door", "nobody", "viewer")
