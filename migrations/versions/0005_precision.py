"""precision

Issue 16 (bf16 training and serving): the matmul precision a model or adapter was trained
in (``fp32`` or ``bf16``), on ``models`` and ``adapters``. Rows from before are null (they
were all trained in fp32, but null says it was not recorded); imported adapters stay null.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 13:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("models", "adapters"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("precision", sa.String(length=8), nullable=True))


def downgrade() -> None:
    for table in ("adapters", "models"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("precision")
