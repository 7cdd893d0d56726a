"""Database package: SQLAlchemy 2.0 tables and the session factory (no FastAPI imports)."""
