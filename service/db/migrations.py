"""Run and check Alembic migrations: ``lora-service migrate``, and the start-up refusal of a
database that is not at the head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from service.db.engine import get_engine

ROOT = Path(__file__).resolve().parents[2]


class DatabaseNotMigrated(RuntimeError):
    """The database lacks the schema (or is behind): run ``lora-service migrate``."""


def alembic_config(database_url: str) -> Config:
    """An Alembic ``Config`` pointing at ``migrations/`` and ``database_url``."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (creating SQLite folders)."""
    get_engine(database_url)  # creates the SQLite parent folder
    command.upgrade(alembic_config(database_url), revision)


def current_and_head(engine: Engine) -> tuple[str | None, str | None]:
    """The database's current revision and the code's head revision."""
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current, script.get_current_head()


def require_migrated(engine: Engine) -> None:
    """Refuse to run on a database that Alembic has not brought to head.

    Raises:
        DatabaseNotMigrated: with the command to run.
    """
    current, head = current_and_head(engine)
    if current != head:
        have = current or "no schema"
        raise DatabaseNotMigrated(
            f"Database {engine.url.render_as_string(hide_password=True)} is at {have}, "
            f"expected {head}. Run `lora-service migrate` (alembic upgrade head) first, "
            "or set AUTO_MIGRATE=true."
        )
