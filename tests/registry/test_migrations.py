"""The Alembic chain runs up and down on SQLite and PostgreSQL, and leaves the schema the models describe."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from thingward.registry.db import alembic_config, make_engine, upgrade_database
from thingward.registry.models import Base

pytestmark = pytest.mark.both_databases


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = make_engine(url)
    try:
        cfg = alembic_config()
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def test_migrations_go_up_down_and_up_again(database_url: str | None, tmp_path: Path) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
    _downgrade(url, "base")
    assert _tables(url) == {"alembic_version"}  # every table, trigger and function of ours is gone
    engine = make_engine(url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    assert _tables(url) == set(Base.metadata.tables) | {"alembic_version"}
