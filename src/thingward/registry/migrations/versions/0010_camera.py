"""Camera journey: upload grants, snapshots, motion analyses, notification preferences and notifications

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _thing_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["thing_id"], ["things.id"], ondelete="CASCADE")


def _user_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "camera_upload_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upload_id", sa.String(length=64), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("max_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        _thing_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("upload_id"),
    )
    op.create_index("ix_camera_upload_grants_thing_id", "camera_upload_grants", ["thing_id"])
    op.create_table(
        "camera_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("upload_id", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=256), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        _thing_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("upload_id"),
    )
    op.create_index("ix_camera_snapshots_thing_id_id", "camera_snapshots", ["thing_id", "id"])
    op.create_table(
        "motion_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("previous_snapshot_id", sa.Integer(), nullable=True),
        sa.Column("motion", sa.Boolean(), nullable=False),
        sa.Column("changed_fraction", sa.Float(), nullable=True),
        sa.Column("region_x", sa.Integer(), nullable=True),
        sa.Column("region_y", sa.Integer(), nullable=True),
        sa.Column("region_width", sa.Integer(), nullable=True),
        sa.Column("region_height", sa.Integer(), nullable=True),
        sa.Column("note", sa.String(length=256), nullable=False),
        sa.Column("annotated_path", sa.String(length=256), nullable=True),
        sa.Column("analysed_at", sa.DateTime(timezone=True), nullable=False),
        _thing_fk(),
        sa.ForeignKeyConstraint(["snapshot_id"], ["camera_snapshots.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["previous_snapshot_id"], ["camera_snapshots.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("snapshot_id"),
    )
    op.create_index("ix_motion_events_thing_id", "motion_events", ["thing_id"])
    op.create_table(
        "notification_preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _user_fk(),
        _thing_fk(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "thing_id", "event_type", name="uq_notification_preferences"),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("motion_event_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _user_fk(),
        _thing_fk(),
        sa.ForeignKeyConstraint(["motion_event_id"], ["motion_events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notifications_user_id_id", "notifications", ["user_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_user_id_id", table_name="notifications")
    op.drop_table("notifications")
    op.drop_table("notification_preferences")
    op.drop_index("ix_motion_events_thing_id", table_name="motion_events")
    op.drop_table("motion_events")
    op.drop_index("ix_camera_snapshots_thing_id_id", table_name="camera_snapshots")
    op.drop_table("camera_snapshots")
    op.drop_index("ix_camera_upload_grants_thing_id", table_name="camera_upload_grants")
    op.drop_table("camera_upload_grants")
