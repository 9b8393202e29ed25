"""certificates: the SHA-256 of each certificate's public key, so one key cannot serve two things;
device_reports: the first model a device reported, pinned

Existing certificates get their key hash from their PEM; existing reports pin the model they carry.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives import serialization

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("public_key_sha256", sa.String(length=64), nullable=True))
        batch.create_index("ix_certificates_public_key_sha256", ["public_key_sha256"])
    connection = op.get_bind()
    certificates = sa.table("certificates", sa.column("id", sa.Integer), sa.column("pem", sa.Text))
    hashes_of = sa.table("certificates", sa.column("id", sa.Integer), sa.column("public_key_sha256", sa.String(64)))
    for cert_id, pem in connection.execute(sa.select(certificates.c.id, certificates.c.pem)).all():
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        connection.execute(
            sa.update(hashes_of)
            .where(hashes_of.c.id == cert_id)
            .values(public_key_sha256=hashlib.sha256(der).hexdigest())
        )

    with op.batch_alter_table("device_reports") as batch:
        batch.add_column(sa.Column("pinned_model", sa.String(length=64), nullable=True))
    reports = sa.table("device_reports", sa.column("model", sa.String(64)), sa.column("pinned_model", sa.String(64)))
    connection.execute(sa.update(reports).values(pinned_model=reports.c.model))


def downgrade() -> None:
    with op.batch_alter_table("device_reports") as batch:
        batch.drop_column("pinned_model")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_public_key_sha256")
        batch.drop_column("public_key_sha256")
