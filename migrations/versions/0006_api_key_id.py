"""api_key_id

Issue 17 (limits per key): ``jobs.api_key_id``, the id of the API key that submitted a job
(``key_`` + 16 hex digits of the key's SHA-256, :func:`service.core.api_keys.key_id`; never
the key), indexed for the per-key cap on queued + running jobs. Existing jobs have none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(length=32), nullable=True))
        batch.create_index("ix_jobs_api_key_id", ["api_key_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_api_key_id")
        batch.drop_column("api_key_id")
