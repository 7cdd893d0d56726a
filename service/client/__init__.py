"""The service's public Python client and the commands built on it.

:class:`Client` (``service/client/http.py``) is the typed client of the REST API, with
:class:`ServiceError` for every error answer and the answer types of
``service/client/types.py``; ``commands.py`` gives ``lora-service`` its ``jobs``,
``models``, ``adapters`` and ``predict`` commands on it, and ``compare`` and ``demo`` run
the full-fine-tune-versus-LoRA comparison through it. They reach the service only over HTTP
(from the core they take the settings, for the URL and key, and the service's words).
"""

from service.client.http import Client, ServiceError

__all__ = ["Client", "ServiceError"]
