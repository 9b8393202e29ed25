"""Migration 0005 builds exactly the tables the models describe (and can be undone)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from thingward.registry.db import make_engine, upgrade_database
from thingward.registry.models import Base

ACCOUNT_TABLES = {
    "users",
    "recovery_codes",
    "known_browsers",
    "user_sessions",
    "one_time_tokens",
    "api_tokens",
    "login_throttle",
    "user_groups",
    "user_group_members",
    "thing_shares",
}


def _diffs_on_account_tables(engine) -> list:
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    return [d for d in diffs if any(t in repr(d) for t in ACCOUNT_TABLES)]


def test_migration_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_database(engine)
        assert set(inspect(engine).get_table_names()) >= ACCOUNT_TABLES
        assert _diffs_on_account_tables(engine) == []
    finally:
        engine.dispose()


def test_downgrade_removes_the_account_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_database(engine)
        from alembic import command

        from thingward.registry.db import alembic_config

        cfg = alembic_config()
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0004")
        assert not ACCOUNT_TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
