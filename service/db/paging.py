"""One page of a list query and the total count of its matches."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session


def page(session: Session, stmt: Select, limit: int, offset: int) -> tuple[list[Any], int]:
    """``limit`` rows of ``stmt`` after skipping ``offset``, and how many rows match in all."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    items = list(session.scalars(stmt.limit(limit).offset(offset)))
    return items, int(total or 0)
