"""Celery worker: the app (``celery_app``), the thin task (``tasks``) and the job runner."""
