"""Settings, errors, the service's words, the typed job spec and the artifact store: what
every other layer shares. No FastAPI, nothing from the layers above."""
