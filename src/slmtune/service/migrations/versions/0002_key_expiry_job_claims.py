"""key expiry and a claim counter on jobs (the lease's fencing token)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

* ``api_keys.expires_at``: a key past it gets 401 (``slmtune keys create --expires-in``); NULL = never.
* ``jobs.claims``: bumped by every claim of a job; a worker's writes name the value it claimed with, so a worker
  whose lease was taken over writes nothing more. Existing rows start at 0.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("claims", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("claims")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("expires_at")
