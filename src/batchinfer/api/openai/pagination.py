"""OpenAI's cursor pagination: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``,
the next page asked for with ``after=<last_id>``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def cursor_page(
    items: Sequence[T],
    id_of: Callable[[T], str],
    after: str | None,
    limit: int,
) -> tuple[list[T], bool]:
    """The ``limit`` items that follow the one whose id is ``after`` (from the start without it),
    and whether more follow. An ``after`` that names no item gives an empty page: the cursor's
    place is unknown, and starting over would repeat items the client has seen."""
    start = 0
    if after is not None:
        ids = [id_of(item) for item in items]
        if after not in ids:
            return [], False
        start = ids.index(after) + 1
    page = list(items[start : start + limit])
    return page, start + limit < len(items)


def list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
