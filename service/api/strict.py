"""One rule for request parameters an endpoint does not declare: refuse them.

A query parameter, or a form field of a form body, that the route does not declare answers
422 ``unknown_parameter`` naming it (``param``) and listing the accepted names, instead of
being silently ignored (round one: ``POST /predict?adapter_id=X`` answered with the base
model). The rule is :func:`refuse_unknown`; :class:`StrictRoute` applies it before a route
runs (every router of the app is built with ``route_class=StrictRoute``, and a test checks
that every route is one), and ``/predict``, which reads its own multipart body, calls it
for its form fields.

Path parameters, headers and cookies are not checked; JSON bodies are checked by their
models (``extra="forbid"``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any

from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import AliasChoices, BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.core.errors import ApiError

FORM_CONTENT_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})
_MAX_NAMES_SHOWN = 10
_MAX_NAME_CHARS = 80

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def refuse_unknown(names: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Refuse request parameters outside ``allowed``.

    Args:
        names: the names the request sent (duplicates allowed).
        allowed: the names the endpoint declares.
        where: what they are, singular, for the message ("query parameter", "form field").

    Raises:
        ApiError: 422 ``unknown_parameter``; ``param`` is the first unknown name (sorted),
            the message names every unknown one and lists the accepted names.
    """
    accepted = set(allowed)
    unknown = sorted(set(names) - accepted)
    if not unknown:
        return
    shown = ", ".join(repr(_clip(n)) for n in unknown[:_MAX_NAMES_SHOWN])
    if len(unknown) > _MAX_NAMES_SHOWN:
        shown += f" and {len(unknown) - _MAX_NAMES_SHOWN} more"
    plural = "s" if len(unknown) > 1 else ""
    known = (
        f"accepted: {', '.join(sorted(accepted))}"
        if accepted
        else f"this endpoint takes no {where}s"
    )
    raise ApiError(
        422, "unknown_parameter", f"Unknown {where}{plural} {shown} ({known}).", unknown[0]
    )


def _clip(name: str) -> str:
    return name if len(name) <= _MAX_NAME_CHARS else name[:_MAX_NAME_CHARS] + "..."


def _field_names(info: Any, name: str) -> Iterator[str]:
    """The request names of one field: its alias (else its name) and any validation alias."""
    yield getattr(info, "alias", None) or name
    alias = getattr(info, "validation_alias", None)
    if isinstance(alias, str):
        yield alias
    elif isinstance(alias, AliasChoices):
        yield from (c for c in alias.choices if isinstance(c, str))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """``Model`` for a parameter typed ``Model`` or ``Model | None`` (FastAPI flattens it)."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    candidate = args[0] if len(args) == 1 else annotation
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        return candidate
    return None


def _param_names(field: Any) -> Iterator[str]:
    model = _model_of(field.field_info.annotation)
    if model is not None:
        for name, info in model.model_fields.items():
            yield from _field_names(info, name)
    else:
        yield field.alias
        yield from _field_names(field.field_info, field.alias)


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def declared_parameters(dependant: Dependant) -> tuple[frozenset[str], frozenset[str] | None]:
    """The query names and form field names a route (and its dependencies) declare.

    Returns:
        ``(query names, form field names)``; the second is None when the route declares
        no ``Form``/``File`` body parameter (its body, if any, is not a form).
    """
    query: set[str] = set()
    form: set[str] = set()
    has_form = False
    for dep in _dependants(dependant):
        for field in dep.query_params:
            query.update(_param_names(field))
        for field in dep.body_params:
            if isinstance(field.field_info, params.Form):  # File is a Form
                has_form = True
                form.update(_param_names(field))
    return frozenset(query), (frozenset(form) if has_form else None)


def documented_query_names(openapi_extra: dict[str, Any] | None) -> frozenset[str]:
    """Query parameters a route documents in ``openapi_extra["parameters"]`` (for a route
    that reads them itself instead of declaring FastAPI ``Query`` parameters)."""
    documented = (openapi_extra or {}).get("parameters", ())
    return frozenset(p["name"] for p in documented if p.get("in") == "query")


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() in FORM_CONTENT_TYPES


def _form_limits(request: Request, route: APIRoute) -> dict[str, int]:
    """The limits FastAPI parses this route's form with (router's, then the route's own)."""
    inherited = request.scope.get("fastapi", {}).get("form_limits") or {}
    return {**inherited, **(getattr(route, "form_limits", None) or {})}


class StrictRoute(APIRoute):
    """An ``APIRoute`` that refuses undeclared query parameters and form fields.

    Before the route's own handler runs, the request's query names, and for a form body on
    a route that declares ``Form``/``File`` parameters its field names, go through
    :func:`refuse_unknown` (422 ``unknown_parameter``). The form is parsed here with the
    limits FastAPI would use; Starlette caches it on the ``Request``, which the handler
    reads again, so the body is read once.
    """

    def get_route_handler(self) -> Handler:
        """The route's handler, preceded by the unknown-parameter check."""
        handler = super().get_route_handler()
        query_names, form_names = declared_parameters(self.dependant)
        query_names |= documented_query_names(self.openapi_extra)

        async def strict_handler(request: Request) -> Response:
            if request.scope.get("query_string"):
                refuse_unknown(request.query_params.keys(), query_names, "query parameter")
            if form_names is not None and _is_form(request):
                await self._check_form(request, form_names)
            return await handler(request)

        return strict_handler

    async def _check_form(self, request: Request, allowed: frozenset[str]) -> None:
        try:
            form = await request.form(**_form_limits(request, self))
        except HTTPException:  # malformed, too many parts, or over the body-size limit
            raise
        except Exception as exc:  # what FastAPI's own reader answers for these
            raise HTTPException(400, "There was an error parsing the body") from exc
        try:
            refuse_unknown(form.keys(), allowed, "form field")
        except ApiError:
            await form.close()  # the handler, which would close its temp files, won't run
            raise
