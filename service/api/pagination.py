"""``limit``/``offset`` query parameters shared by the list endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from service.core.errors import ApiError


class PageParams:
    """``limit`` (1..PAGE_SIZE_MAX, default 50) and ``offset`` (>= 0) of a list request."""

    def __init__(self, limit: int, offset: int) -> None:
        self.limit = limit
        self.offset = offset


def page_params(
    request: Request,
    limit: Annotated[int, Query(ge=1, description="Items per page (at most PAGE_SIZE_MAX).")] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9, description="Items to skip.")] = 0,
) -> PageParams:
    """Read and bound the page parameters.

    Raises:
        ApiError: 422 ``validation_error`` (param ``limit``) above ``PAGE_SIZE_MAX``.
    """
    largest = request.app.state.settings.page_size_max
    if limit > largest:
        raise ApiError(
            422, "validation_error", f"limit: must be at most {largest}, got {limit}.", "limit"
        )
    return PageParams(limit, offset)


PageDep = Annotated[PageParams, Depends(page_params)]
