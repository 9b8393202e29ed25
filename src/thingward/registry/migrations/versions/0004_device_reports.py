"""device-reported state, device model profiles and firmware advisories

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=512), nullable=False),
        sa.Column("allowed_tcp_ports", sa.Text(), nullable=False),
        sa.Column("allowed_udp_ports", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "firmware_advisories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("advisory_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("affected", sa.String(length=128), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("severity in ('critical', 'high', 'medium', 'low')", name="ck_firmware_advisories_severity"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("advisory_id"),
    )
    op.create_table(
        "device_reports",
        sa.Column("thing_id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("firmware_version", sa.String(length=64), nullable=True),
        sa.Column("tcp_ports", sa.Text(), nullable=False),
        sa.Column("udp_ports", sa.Text(), nullable=False),
        sa.Column("onboarding_state", sa.String(length=16), nullable=False),
        sa.Column("onboarding_since", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["thing_id"], ["things.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("thing_id"),
    )


def downgrade() -> None:
    op.drop_table("device_reports")
    op.drop_table("firmware_advisories")
    op.drop_table("device_models")
