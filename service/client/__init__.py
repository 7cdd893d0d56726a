"""The public API's client and the commands built on it (``compare``, ``demo``); it knows
the service only through HTTP."""
