"""One router module per resource: jobs, models, adapters, predict, health."""
