"""The Celery worker: the app (``celery_app``), the thin task (``tasks``), the job runner
(``runner``: load spec, train, publish) with what it trains (``build``), the lease heartbeat,
the reaper and resume from checkpoints."""
