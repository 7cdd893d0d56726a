"""rename model kinds: pretrained -> pretrain, finetuned_full -> finetune_full

Round one stored ``models.kind`` as ``pretrained`` / ``finetuned_full``. The new vocabulary
(``service.core.vocab.ModelKind``) names a model after the kind of job that trained it, so
the same words appear in ``jobs.kind`` and ``models.kind``: ``pretrain`` / ``finetune_full``.
This revision renames the stored values; the schema is unchanged (``kind`` stays a
``String(32)``). Requests that still say ``?kind=pretrained`` are mapped by the API
(``service.core.vocab.LEGACY_MODEL_KINDS``), not by the database.

The names are spelled out here rather than imported from ``service.core.vocab``: a
migration must keep doing what it did when it was written, whatever the code says later.
Plain ``UPDATE`` statements, so it runs the same on SQLite and Postgres (no batch mode
needed), and is idempotent: running it on already renamed rows changes nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# round-one name -> new name
RENAMES: dict[str, str] = {
    "pretrained": "pretrain",
    "finetuned_full": "finetune_full",
}

_models = sa.table("models", sa.column("kind", sa.String(length=32)))


def _rename(mapping: dict[str, str]) -> None:
    for old, new in mapping.items():
        op.execute(_models.update().where(_models.c.kind == old).values(kind=new))


def upgrade() -> None:
    _rename(RENAMES)


def downgrade() -> None:
    _rename({new: old for old, new in RENAMES.items()})
