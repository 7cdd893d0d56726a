"""The public API's client and the commands built on it (``compare``, ``demo``): they reach
the service only over HTTP (from the core they take the settings, for the URL and key, and
the job statuses)."""
