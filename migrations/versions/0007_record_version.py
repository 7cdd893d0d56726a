"""record_version

Issue 16 (no per-batch SQL on the serving hot path): ``record_version``, one row whose
``version`` the database itself bumps, by trigger, in the same transaction as any insert,
update or delete on ``models`` or ``adapters`` (whatever wrote it: the service, another
process, a bulk statement, psql). Serving caches the records it resolves and re-reads
them only when this number has moved (:mod:`service.serving.records`): one one-row read
per micro-batch instead of a query per table.

SQLite: a row trigger per table and event (SQLite has no statement triggers). Postgres: one
plpgsql function and a statement trigger per table (``INSERT OR UPDATE OR DELETE OR
TRUNCATE``). Caution for later migrations: on SQLite, ``batch_alter_table`` rebuilds the
table and drops its triggers; such a migration must create them again (``_create_triggers``
here), and ``tests/service/test_record_version.py`` checks them at the head.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("models", "adapters")
_BUMP = "UPDATE record_version SET version = version + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "record_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO record_version (id, version) VALUES (1, 0)")
    _create_triggers()


def _create_triggers() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(
                    f"CREATE TRIGGER {table}_{event}_bumps_record_version "
                    f"AFTER {event.upper()} ON {table} BEGIN {_BUMP}; END"
                )
        return
    op.execute(
        "CREATE FUNCTION bump_record_version() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_bumps_record_version "
            f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION bump_record_version()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_{event}_bumps_record_version")
    else:
        for table in TABLES:
            op.execute(f"DROP TRIGGER {table}_bumps_record_version ON {table}")
        op.execute("DROP FUNCTION bump_record_version()")
    op.drop_table("record_version")
