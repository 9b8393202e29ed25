"""Writers at once, and writers who try to rewrite history, on SQLite and PostgreSQL alike.

SQLite serializes writers with its database lock; PostgreSQL runs them side by side, so the registry takes
its own locks there (registry.db, audit_log.record_event). These tests race real threads on real databases.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError
from sqlalchemy.orm import sessionmaker

from thingward.errors import ConflictError
from thingward.platform import Platform
from thingward.registry import things
from thingward.registry.audit_log import Actor, record_event, verify_audit_chain
from thingward.registry.models import AuditEvent, Thing

ACTOR = Actor("test", "pytest")
WAIT = 30

pytestmark = pytest.mark.both_databases


def _events(platform: Platform) -> list[AuditEvent]:
    with platform.db.read() as session:
        return list(session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


def _assert_linear(events: list[AuditEvent]) -> None:
    """Each event links to the one before it: one line, no fork, no gap in the links."""
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == before.hash, (before.id, after.id)
    assert len({e.prev_hash for e in events}) == len(events)


def test_concurrent_appends_keep_the_chain_linear_even_without_the_session_lock(platform: Platform) -> None:
    # Plain sessions on the engine, not Database.session(): record_event's own lock must be enough.
    raw_sessions = sessionmaker(platform.db.engine, info={"audit_key": platform.db.audit_key})
    writers, per_writer = 8, 6
    before = len(_events(platform))
    barrier = threading.Barrier(writers, timeout=WAIT)

    def write(w: int) -> None:
        barrier.wait()
        for i in range(per_writer):
            with raw_sessions() as session, session.begin():
                record_event(session, ACTOR, "test.write", f"writer:{w}", {"i": i})

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    events = _events(platform)
    assert len(events) - before == writers * per_writer
    _assert_linear(events)
    with platform.db.read() as session:
        assert verify_audit_chain(session) is None


def test_racing_adds_of_one_name_make_one_thing_and_clean_conflicts(platform: Platform) -> None:
    # The name check and the insert must see each other's commits: the losers get ConflictError, not a
    # raw unique-constraint error, and nothing half-made is left.
    racers = 8
    barrier = threading.Barrier(racers, timeout=WAIT)

    def add(_: int) -> str:
        barrier.wait()
        try:
            with platform.db.session() as session:
                things.add_thing(session, ACTOR, "cam1")
        except ConflictError:
            return "conflict"
        return "added"

    with ThreadPoolExecutor(racers) as pool:
        outcomes = sorted(pool.map(add, range(racers)))
    assert outcomes == ["added"] + ["conflict"] * (racers - 1)
    with platform.db.read() as session:
        assert session.execute(select(Thing.name)).scalars().all() == ["cam1"]
    _assert_linear(_events(platform))


def test_audit_log_cannot_be_emptied_in_one_statement(platform: Platform) -> None:
    # PostgreSQL's TRUNCATE fires no row trigger; SQLite's unconditional DELETE is its truncate.
    statement = "TRUNCATE audit_events" if platform.db.dialect == "postgresql" else "DELETE FROM audit_events"
    count = len(_events(platform))
    with pytest.raises(DBAPIError, match="append-only"), platform.db.session() as session:
        session.execute(text(statement))
    assert len(_events(platform)) == count > 0


def _forged_row(platform: Platform, **changes: object) -> dict[str, object]:
    newest = _events(platform)[-1]
    row = {
        "at": dt.datetime.now(dt.UTC),
        "actor": "cli:mallory",
        "source": "host:evil",
        "action": "thing.add",
        "target": "thing:ghost",
        "detail": "{}",
        "prev_hash": newest.hash,
        "hash": "f" * 64,
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "changes",
    [
        {"prev_hash": "0" * 64},  # a second genesis: a new history beside the real one
        {"prev_hash": "a" * 64},  # linked to an event that does not exist
        {"id": 1},  # an old id
    ],
    ids=["second-genesis", "dangling-link", "old-id"],
)
def test_forged_inserts_refused(platform: Platform, changes: dict[str, object]) -> None:
    before = _events(platform)
    with pytest.raises(DBAPIError), platform.db.session() as session:
        session.execute(insert(AuditEvent).values(**_forged_row(platform, **changes)))
    assert [(e.id, e.hash) for e in _events(platform)] == [(e.id, e.hash) for e in before]


def test_upsert_cannot_replace_an_old_event(platform: Platform) -> None:
    # INSERT OR REPLACE on SQLite, INSERT ... ON CONFLICT DO UPDATE on PostgreSQL: both end in the triggers.
    first = _events(platform)[0]
    row = _forged_row(platform, id=first.id, prev_hash=first.prev_hash)
    if platform.db.dialect == "postgresql":
        pg = pg_insert(AuditEvent).values(**row)
        statement = pg.on_conflict_do_update(index_elements=["id"], set_={"actor": pg.excluded.actor})
    else:
        statement = sqlite_insert(AuditEvent).prefix_with("OR REPLACE").values(**row)
    with pytest.raises(DBAPIError, match="append-only"), platform.db.session() as session:
        session.execute(statement)
    assert _events(platform)[0].actor == first.actor


@pytest.mark.parametrize("database_backend", ["postgresql"], indirect=True)
def test_read_sessions_on_postgresql_cannot_write(platform: Platform) -> None:
    with pytest.raises(InternalError, match="read-only transaction"), platform.db.read() as session:
        things.add_thing(session, ACTOR, "cam1")
    with platform.db.session() as session:  # the pooled connection is writable again for a write session
        things.add_thing(session, ACTOR, "cam1")
    with platform.db.read() as session:
        assert things.get_thing(session, "cam1").name == "cam1"


@pytest.mark.parametrize("database_backend", ["postgresql"], indirect=True)
def test_a_writer_stuck_elsewhere_makes_the_next_one_fail_not_hang(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("thingward.registry.db.WRITER_LOCK_TIMEOUT_MS", 300)
    holding, release = threading.Event(), threading.Event()

    def stuck_writer() -> None:
        with platform.db.session():
            holding.set()
            release.wait(WAIT)

    thread = threading.Thread(target=stuck_writer)
    thread.start()
    try:
        assert holding.wait(WAIT)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"), platform.db.session() as session:
            things.add_thing(session, ACTOR, "cam1")
        assert time.monotonic() - started < 5
        with platform.db.read() as session:  # readers never wait for the writer
            assert things.list_things(session) == []
    finally:
        release.set()
        thread.join(WAIT)
    with platform.db.session() as session:
        things.add_thing(session, ACTOR, "cam1")
