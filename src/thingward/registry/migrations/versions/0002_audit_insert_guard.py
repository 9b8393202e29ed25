"""audit log: refuse inserts that rewrite or fork history

An INSERT OR REPLACE (SQLite) or an insert with a chosen id could replace old events without firing the
DELETE trigger; a new event must come after the newest one and link to its hash. The genesis link
(64 zeros) is written out in the SQL: a constant, nothing is interpolated.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_GUARD = """
CREATE TRIGGER audit_events_insert_guard BEFORE INSERT ON audit_events
WHEN (NEW.id IS NOT NULL AND NEW.id > 0 AND NEW.id <= (SELECT COALESCE(MAX(id), 0) FROM audit_events))
  OR NEW.prev_hash IS NOT COALESCE(
       (SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1),
       '0000000000000000000000000000000000000000000000000000000000000000')
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: a new event must follow the newest one'); END
"""

POSTGRES_GUARD_FUNCTION = """
CREATE FUNCTION audit_events_insert_guard() RETURNS trigger AS $$
DECLARE last_id integer; last_hash text;
BEGIN
  LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE;
  SELECT id, hash INTO last_id, last_hash FROM audit_events ORDER BY id DESC LIMIT 1;
  IF (last_id IS NOT NULL AND NEW.id <= last_id)
     OR NEW.prev_hash IS DISTINCT FROM COALESCE(
          last_hash,
          '0000000000000000000000000000000000000000000000000000000000000000') THEN
    RAISE EXCEPTION 'audit_events is append-only: a new event must follow the newest one';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql
"""

POSTGRES_GUARD_TRIGGER = """
CREATE TRIGGER audit_events_insert_guard BEFORE INSERT ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_insert_guard()
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(SQLITE_GUARD)
    elif dialect == "postgresql":
        op.execute(POSTGRES_GUARD_FUNCTION)
        op.execute(POSTGRES_GUARD_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_insert_guard ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_insert_guard()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_insert_guard")
