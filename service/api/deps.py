"""Shared route dependencies: the database session, the settings of the running app, and the
app's predictor."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.core.settings import Settings
from service.db.engine import session_factory
from service.serving.predictor import Predictor

log = logging.getLogger(__name__)


def get_settings_dep(request: Request) -> Settings:
    """The settings the app was built with (``app.state.settings``)."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """A session on the app's database for one request, closed afterwards.

    Closing rolls back on the connection; when the database cut that connection meanwhile
    (restart, ``pg_terminate_backend``) the rollback fails after the answer may already be
    on its way, and an exception there made the server reset the client's connection: the
    connection is dropped from the pool instead (soak, issue 17).
    """
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        try:
            session.close()
        except DBAPIError as exc:
            log.warning("database connection lost while closing a session: %s", exc.orig)
            session.invalidate()


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_predictor(request: Request) -> Predictor:
    """The app's predictor, created on first use (``app.state.predictor``).

    Called directly rather than through ``Depends``: on the hot path FastAPI's dependency
    solving costs more than this function. Runs on the event loop, so creation is not racy.
    """
    predictor: Predictor | None = getattr(request.app.state, "predictor", None)
    if predictor is None or predictor.closed:
        predictor = Predictor(request.app.state.settings)
        request.app.state.predictor = predictor
    return predictor
