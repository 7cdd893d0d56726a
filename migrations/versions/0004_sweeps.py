"""sweeps

Issue 12 (sweeps over seeds with confidence intervals): a ``sweeps`` table (the request as
validated, the planned number of jobs, the cancel request, an Idempotency-Key) and, on
``jobs``, the sweep that created a job (``sweep_id``) and its place in the sweep's grid
(``sweep_cell``), unique per sweep. Existing jobs belong to no sweep.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("n_jobs", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sweep_cell", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key("fk_jobs_sweep_id", "sweeps", ["sweep_id"], ["id"])
        batch_op.create_index("uq_jobs_sweep_cell", ["sweep_id", "sweep_cell"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("uq_jobs_sweep_cell")
        batch_op.drop_constraint("fk_jobs_sweep_id", type_="foreignkey")
        batch_op.drop_column("sweep_cell")
        batch_op.drop_column("sweep_id")
    op.drop_table("sweeps")
