"""Support KPIs and a customer's inquiry history over HTTP (``analytics:read``).

Included from entrypoints/api.py with one line; its queries are analytics.support_queries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from analytics.entrypoints import responses as R
from analytics.entrypoints.params import Day
from analytics.queries import Queries
from crm_platform.http import ApiError, Principal, require_scope

if TYPE_CHECKING:  # api.py includes this router: a type-only import, no cycle
    from analytics.entrypoints.api import Analytics

T = TypeVar("T")
MAX_PERIOD_DAYS = 3_660
CODE = r"^[a-z][a-z0-9_]{0,63}$"

router = APIRouter(prefix="/v1", tags=["support"])
Reader = Annotated[Principal, Depends(require_scope("analytics:read"))]


async def _analytics(request: Request) -> Analytics:
    analytics: Analytics = request.app.state.analytics
    return analytics


Runner = Annotated["Analytics", Depends(_analytics)]


async def _run(analytics: Analytics, fn: Callable[[Any], T]) -> T:
    """Run ``fn`` on SupportQueries with the API's client pool and budget."""
    from analytics.support_queries import SupportQueries

    def call(queries: Queries) -> T:
        return fn(SupportQueries.of(queries))

    return await analytics.run(call)


@router.get(
    "/support/kpis",
    response_model=R.SupportKpis,
    summary="Support KPIs: opened, resolved, backlog, response times, SLA, CSAT",
)
async def support_kpis(
    analytics: Runner,
    _: Reader,
    start: Annotated[Day, Query(description="first day of the period (Asia/Tokyo), inclusive")],
    end: Annotated[Day, Query(description="day after the period's last, exclusive")],
    by: Literal["none", "channel", "category"] = "none",
    channel: Annotated[Literal["phone", "email", "chat", "store", "form", "line"] | None, Query()] = None,
    category: Annotated[str | None, Query(pattern=CODE)] = None,
) -> dict[str, Any]:
    """Definitions: docs/analytics.md (Support KPIs)."""
    if end <= start:
        raise ApiError(422, "invalid_period", f"end ({end}) must be after start ({start})")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise ApiError(422, "invalid_period", f"a period is at most {MAX_PERIOD_DAYS} days")
    return await _run(analytics, lambda q: q.kpis(start, end, by, channel or "", category or ""))


@router.get(
    "/customers/{customer_id}/tickets",
    response_model=R.CustomerTickets,
    summary="A customer's inquiry history (no content)",
)
async def customer_tickets(
    analytics: Runner,
    _: Reader,
    customer_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    def query(q: Any) -> dict[str, Any]:
        keys = q.customer_keys(str(customer_id))
        return {"customer_id": str(customer_id), **q.customer_tickets(keys, limit)}

    return await _run(analytics, query)
