"""HTTP only: one router per resource, request and answer schemas, the error envelope,
security middleware and the refusal of unknown parameters. The only package importing FastAPI."""
