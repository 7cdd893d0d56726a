"""FastAPI service: job submission, registry of models and adapters, and prediction."""
