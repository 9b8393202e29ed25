"""OTA rollout campaigns (issue 4): campaigns and one job per device

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollout_campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("target_path", sa.String(length=256), nullable=False),
        sa.Column("group_name", sa.String(length=64), nullable=True),
        sa.Column("advisory_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("waves", sa.Text(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("max_per_minute", sa.Integer(), nullable=False),
        sa.Column("abort_failure_percent", sa.Integer(), nullable=False),
        sa.Column("abort_min_finished", sa.Integer(), nullable=False),
        sa.Column("timeout_seconds", sa.Integer(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.CheckConstraint(
            "state in ('running', 'paused', 'completed', 'aborted', 'canceled')", name="ck_rollout_campaigns_state"
        ),
    )
    op.create_index("ix_rollout_campaigns_state", "rollout_campaigns", ["state"])
    op.create_table(
        "rollout_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("substate", sa.String(length=16), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("from_version", sa.String(length=64), nullable=True),
        sa.Column("reported_version", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=512), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["rollout_campaigns.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["thing_id"], ["things.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("campaign_id", "thing_id", name="uq_rollout_jobs_campaign_thing"),
    )
    op.create_index("ix_rollout_jobs_campaign_state", "rollout_jobs", ["campaign_id", "state"])
    op.create_index("ix_rollout_jobs_thing", "rollout_jobs", ["thing_id"])
    op.create_index("ix_rollout_jobs_notify", "rollout_jobs", ["notify"])


def downgrade() -> None:
    op.drop_index("ix_rollout_jobs_notify", table_name="rollout_jobs")
    op.drop_index("ix_rollout_jobs_thing", table_name="rollout_jobs")
    op.drop_index("ix_rollout_jobs_campaign_state", table_name="rollout_jobs")
    op.drop_table("rollout_jobs")
    op.drop_index("ix_rollout_campaigns_state", table_name="rollout_campaigns")
    op.drop_table("rollout_campaigns")
