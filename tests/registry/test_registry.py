"""The registry: names, group trees, tokens stored only as hashes, and an audit log that cannot be rewritten."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from thingward.errors import ConfigError, ConflictError, InvalidInputError, NotFoundError
from thingward.platform import Platform, init_data_dir
from thingward.registry import things
from thingward.registry.audit_log import Actor, list_events, verify_audit_chain
from thingward.registry.models import EnrollmentToken

ACTOR = Actor("test", "pytest")

pytestmark = pytest.mark.both_databases


@pytest.mark.parametrize("name", ["", "Cam1", "cam 1", "cam/1", "cam+", "#", "a" * 65, "cam1\x00"])
def test_invalid_thing_names_refused(platform: Platform, name: str) -> None:
    with platform.db.session() as session, pytest.raises(InvalidInputError, match="invalid thing name"):
        things.add_thing(session, ACTOR, name)


def test_thing_joins_default_group_and_duplicates_refused(platform: Platform) -> None:
    with platform.db.session() as session:
        thing = things.add_thing(session, ACTOR, "cam1")
        assert [g.name for g in thing.groups] == ["default"]
    with platform.db.session() as session, pytest.raises(ConflictError, match="exists already"):
        things.add_thing(session, ACTOR, "cam1")


def test_unknown_group_refused_and_nothing_stored(platform: Platform) -> None:
    with platform.db.session() as session, pytest.raises(NotFoundError, match="no thing group named 'nope'"):
        things.add_thing(session, ACTOR, "cam1", ["nope"])
    with platform.db.read() as session, pytest.raises(NotFoundError):
        things.get_thing(session, "cam1")


def test_group_depth_limited_to_seven(platform: Platform) -> None:
    with platform.db.session() as session:
        parent = None
        for level in range(1, 8):
            things.add_group(session, ACTOR, f"g{level}", parent)
            parent = f"g{level}"
    with platform.db.session() as session, pytest.raises(ConflictError, match="limit is 7"):
        things.add_group(session, ACTOR, "g8", "g7")


def test_group_cycle_refused(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_group(session, ACTOR, "a")
        things.add_group(session, ACTOR, "b", "a")
        things.add_group(session, ACTOR, "c", "b")
    with platform.db.session() as session, pytest.raises(ConflictError, match="cycle"):
        things.set_group_parent(session, ACTOR, "a", "c")


def test_moving_a_subtree_respects_depth(platform: Platform) -> None:
    with platform.db.session() as session:
        for i in range(1, 5):
            things.add_group(session, ACTOR, f"x{i}", f"x{i - 1}" if i > 1 else None)
        for i in range(1, 5):
            things.add_group(session, ACTOR, f"y{i}", f"y{i - 1}" if i > 1 else None)
    with platform.db.session() as session, pytest.raises(ConflictError, match="8 levels deep"):
        things.set_group_parent(session, ACTOR, "y1", "x4")


def _everything_stored(platform: Platform, request: pytest.FixtureRequest) -> bytes:
    """The database's bytes: the SQLite file, or a pg_dump of the PostgreSQL database."""
    if platform.db.dialect == "postgresql":
        schema = str(platform.db.engine.url.query["options"]).removeprefix("-csearch_path=")
        return request.getfixturevalue("postgres").dump(schema)
    platform.db.dispose()
    return platform.settings.data_dir.joinpath("thingward.db").read_bytes()


def test_enrollment_token_stored_only_as_hash(platform: Platform, request: pytest.FixtureRequest) -> None:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
        issued = things.create_enrollment_token(session, ACTOR, "cam1", dt.timedelta(hours=1))
    secret = issued.token.split(".", 1)[1]
    raw = _everything_stored(platform, request)
    assert b"cam1" in raw  # the dump holds the data, so the next line can fail
    assert secret.encode() not in raw
    with platform.db.read() as session:
        row = session.execute(select(EnrollmentToken)).scalar_one()
        assert row.token_sha256 == things.token_digest(issued.token)
        assert secret not in (row.token_sha256,)


def test_every_change_is_audited_with_actor_and_source(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_thing(session, Actor("alice", "host:lab"), "cam1", attributes={"model": "c100"})
    with platform.db.read() as session:
        event = list_events(session, 1)[0]
    assert (event.actor, event.source, event.action, event.target) == ("alice", "host:lab", "thing.add", "thing:cam1")
    assert '"model":"c100"' in event.detail


def test_audit_log_refuses_update_and_delete(platform: Platform) -> None:
    with pytest.raises(DBAPIError, match="append-only"), platform.db.session() as session:
        session.execute(text("UPDATE audit_events SET actor = 'mallory'"))
    with pytest.raises(DBAPIError, match="append-only"), platform.db.session() as session:
        session.execute(text("DELETE FROM audit_events"))


def test_audit_chain_detects_an_edit_made_around_the_triggers(platform: Platform) -> None:
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
        things.add_thing(session, ACTOR, "cam2")
    with platform.db.read() as session:
        assert verify_audit_chain(session) is None
        victim = list_events(session, 1, "thing:cam1")[0].id
    with platform.db.session() as session:
        if platform.db.dialect == "postgresql":
            session.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))
        else:
            session.execute(text("DROP TRIGGER audit_events_no_update"))
        session.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"), {"id": victim})
    with platform.db.read() as session:
        assert verify_audit_chain(session) == victim


def test_init_refuses_existing_data_dir(platform: Platform) -> None:
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_data_dir(platform.settings.data_dir)


def test_values_longer_than_their_columns_refused_clearly_on_every_database(platform: Platform) -> None:
    # SQLite would store them; PostgreSQL would fail with a raw "value too long": both say the same instead.
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
    with pytest.raises(InvalidInputError, match="revocation reason is 65 characters long; the limit is 64"):
        platform.revoke(ACTOR, "cam1", "r" * 65)
    with pytest.raises(InvalidInputError, match="the limit is 512"), platform.db.session() as session:
        things.add_group(session, ACTOR, "cams", description="d" * 513)
    with pytest.raises(InvalidInputError, match="audit event source"), platform.db.session() as session:
        things.add_thing(session, Actor("alice", "host:" + "x" * 200), "cam2")
    with platform.db.read() as session:
        assert [t.name for t in things.list_things(session)] == ["cam1"]
