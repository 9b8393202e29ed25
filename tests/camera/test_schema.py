"""Migration 0010 builds exactly the camera tables the models describe, and can be undone."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from thingward.registry.db import alembic_config, make_engine, upgrade_database
from thingward.registry.models import Base

CAMERA_TABLES = {
    "camera_upload_grants",
    "camera_snapshots",
    "motion_events",
    "notification_preferences",
    "notifications",
}


def test_migration_0010_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_database(engine)
        assert set(inspect(engine).get_table_names()) >= CAMERA_TABLES
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert [d for d in diffs if any(t in repr(d) for t in CAMERA_TABLES)] == []
    finally:
        engine.dispose()


def test_downgrade_to_0009_removes_the_camera_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        upgrade_database(engine)
        cfg = alembic_config()
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0009")
        assert not CAMERA_TABLES & set(inspect(engine).get_table_names())
        upgrade_database(engine)  # and back up again
        assert set(inspect(engine).get_table_names()) >= CAMERA_TABLES
    finally:
        engine.dispose()
