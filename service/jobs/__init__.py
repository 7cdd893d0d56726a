"""What a job is and how its life is recorded: submission and cancellation, state
transitions, leases, and the Celery client side that enqueues it (not how it trains)."""
