"""Cursor (keyset) pagination, the same in every service's list routes.

A list route takes ``limit`` (default :data:`DEFAULT_LIMIT`, at most :data:`MAX_LIMIT`)
and ``cursor`` (the ``next`` of the previous page) and answers a page with ``next``:
``null`` on the last page. A cursor is the position of the last item returned, in the
list's own stable order (a store position, an append-only index), so the next page
starts strictly after it: an item inserted meanwhile never shifts the pages (no item is
shown twice or skipped, unlike an offset). Cursors are opaque to clients (base64url of a
small JSON object); one that does not decode is a 422 naming ``query.cursor``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import Query
from fastapi.exceptions import RequestValidationError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Limit = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"items per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})"),
]
Cursor = Annotated[
    str | None,
    Query(max_length=512, description="where the page starts: the `next` of the previous page"),
]


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def invalid_cursor(
    reason: str = "not a cursor this list handed out", loc: tuple[str, ...] = ("query", "cursor")
) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": reason, "type": "value_error"}])


def decode_cursor(
    cursor: str | None, *keys: str, loc: tuple[str, ...] = ("query", "cursor")
) -> dict[str, Any] | None:
    """The position in ``cursor`` (``None`` for the first page); it must hold ``keys``.
    ``loc``: where the cursor came from, for the 422 (a search body's ``cursor``)."""
    if cursor is None:
        return None
    try:
        position = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise invalid_cursor(loc=loc) from None
    if not isinstance(position, dict) or any(k not in position for k in keys):
        raise invalid_cursor(loc=loc)
    return position
