"""baseline: the schema of slmtune 0.1 (create_all)

Frozen: a database made by slmtune 0.1 has exactly these tables and is stamped with this revision unchanged.

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-02 18:55:44.759988
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("projects",
    sa.Column("id", sa.String(length=64), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    op.create_table("api_keys",
    sa.Column("key_hash", sa.String(length=64), nullable=False),
    sa.Column("project_id", sa.String(length=64), nullable=False),
    sa.Column("prefix", sa.String(length=16), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ),
    sa.PrimaryKeyConstraint("key_hash")
    )
    op.create_table("files",
    sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("project_id", sa.String(length=64), nullable=False),
    sa.Column("filename", sa.String(length=512), nullable=False),
    sa.Column("purpose", sa.String(length=32), nullable=False),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.String(length=16), nullable=False),
    sa.Column("status_details", sa.Text(), nullable=True),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", sa.BigInteger(), nullable=True),
    sa.Column("path", sa.Text(), nullable=False),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ),
    sa.PrimaryKeyConstraint("seq")
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_files_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_files_project_id"), ["project_id"], unique=False)

    op.create_table("jobs",
    sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("project_id", sa.String(length=64), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("model", sa.String(length=256), nullable=False),
    sa.Column("training_file", sa.String(length=40), nullable=False),
    sa.Column("validation_file", sa.String(length=40), nullable=True),
    sa.Column("suffix", sa.String(length=64), nullable=True),
    sa.Column("seed", sa.BigInteger(), nullable=False),
    sa.Column("metadata", sa.JSON(), nullable=True),
    sa.Column("method", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(length=24), nullable=False),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("fine_tuned_model", sa.String(length=256), nullable=True),
    sa.Column("model_deleted", sa.Boolean(), nullable=False),
    sa.Column("finished_at", sa.BigInteger(), nullable=True),
    sa.Column("estimated_finish", sa.BigInteger(), nullable=True),
    sa.Column("trained_tokens", sa.BigInteger(), nullable=True),
    sa.Column("result_files", sa.JSON(), nullable=False),
    sa.Column("pause_requested", sa.Boolean(), nullable=False),
    sa.Column("worker_id", sa.String(length=64), nullable=True),
    sa.Column("lease_until", sa.Float(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("run_dir", sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ),
    sa.PrimaryKeyConstraint("seq")
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_fine_tuned_model"), ["fine_tuned_model"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_jobs_project_id"), ["project_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)

    op.create_table("job_checkpoints",
    sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("job_id", sa.String(length=40), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("step_number", sa.Integer(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("fine_tuned_model_checkpoint", sa.String(length=256), nullable=False),
    sa.Column("path", sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ),
    sa.PrimaryKeyConstraint("seq"),
    sa.UniqueConstraint("job_id", "step_number", name="uq_ckpt_step")
    )
    with op.batch_alter_table("job_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_checkpoints_fine_tuned_model_checkpoint"),
                              ["fine_tuned_model_checkpoint"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_checkpoints_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_job_checkpoints_job_id"), ["job_id"], unique=False)

    op.create_table("job_events",
    sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
    sa.Column("id", sa.String(length=40), nullable=False),
    sa.Column("job_id", sa.String(length=40), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("level", sa.String(length=8), nullable=False),
    sa.Column("type", sa.String(length=8), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("data", sa.JSON(), nullable=True),
    sa.Column("dedupe_key", sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ),
    sa.PrimaryKeyConstraint("seq"),
    sa.UniqueConstraint("job_id", "dedupe_key", name="uq_event_dedupe")
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_events_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_job_events_job_id"), ["job_id"], unique=False)



def downgrade() -> None:
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_events_job_id"))
        batch_op.drop_index(batch_op.f("ix_job_events_id"))

    op.drop_table("job_events")
    with op.batch_alter_table("job_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_checkpoints_job_id"))
        batch_op.drop_index(batch_op.f("ix_job_checkpoints_id"))
        batch_op.drop_index(batch_op.f("ix_job_checkpoints_fine_tuned_model_checkpoint"))

    op.drop_table("job_checkpoints")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_project_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_id"))
        batch_op.drop_index(batch_op.f("ix_jobs_fine_tuned_model"))

    op.drop_table("jobs")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_project_id"))
        batch_op.drop_index(batch_op.f("ix_files_id"))

    op.drop_table("files")
    op.drop_table("api_keys")
    op.drop_table("projects")
