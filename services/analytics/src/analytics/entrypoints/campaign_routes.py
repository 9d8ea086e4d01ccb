"""Campaign report routes of the analytics API (scope ``analytics:read``).

Included from ``entrypoints/api.py``; the queries live in ``analytics.campaigns``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from analytics import campaigns as queries
from analytics.entrypoints import responses as R
from crm_platform.http import ApiError, Principal, require_scope

if TYPE_CHECKING:
    from analytics.entrypoints.api import Analytics

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
Reader = Annotated[Principal, Depends(require_scope("analytics:read"))]


def _analytics(request: Request) -> Analytics:
    analytics: Analytics = request.app.state.analytics
    return analytics


@router.get(
    "",
    response_model=list[R.CampaignSummary],
    summary="Launched campaigns, newest first, with sent / opened / clicked",
)
async def list_campaigns(
    request: Request, _: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    return await _analytics(request).run(lambda q: queries.campaigns(q, limit))


@router.get(
    "/{campaign_id}/report",
    response_model=R.CampaignReport,
    summary="A campaign's funnel (sent, skipped by reason, delivered, opened, clicked, opt-outs) and its "
    "conversions against the holdout: uplift and ROI",
)
async def campaign_report(
    campaign_id: uuid.UUID,
    request: Request,
    _: Reader,
    days: Annotated[
        int | None, Query(ge=1, le=90, description="conversion window (default: the campaign's)")
    ] = None,
    cost: Annotated[
        float | None, Query(gt=0, le=1e12, description="what the campaign cost (yen), for ROI")
    ] = None,
) -> dict[str, Any]:
    report = await _analytics(request).run(lambda q: queries.campaign_report(q, campaign_id, days, cost))
    if report is None:
        raise ApiError(404, "not_found", f"no events of campaign {campaign_id} yet")
    return report
