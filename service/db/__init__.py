"""Records: SQLAlchemy tables, the engine, the migration check, and one module per record
kind (jobs, metrics, models, adapters). No FastAPI: the worker uses it alone."""
