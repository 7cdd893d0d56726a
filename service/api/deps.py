"""Shared route dependencies: the database session and the settings of the running app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.session import session_factory


def get_settings_dep(request: Request) -> Settings:
    """The settings the app was built with (``app.state.settings``)."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """A session on the app's database for one request, closed afterwards."""
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
