"""Survey results and form counts over HTTP (scope ``analytics:read``), included by
``analytics.entrypoints.api``. Queries are in ``analytics.survey_queries``."""

from __future__ import annotations

import uuid
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from analytics.entrypoints import responses as R
from analytics.entrypoints.params import Day
from analytics.survey_queries import SurveyQueries
from crm_platform.http import ApiError, Principal, require_scope

if TYPE_CHECKING:
    from analytics.entrypoints.api import Analytics

router = APIRouter(prefix="/v1", tags=["surveys and forms"])
Reader = Annotated[Principal, Depends(require_scope("analytics:read"))]
Start = Annotated[Day, Query(description="first day of the period (Asia/Tokyo), inclusive")]
End = Annotated[Day, Query(description="day after the period's last, exclusive")]
MAX_PERIOD_DAYS = 3_660


async def _analytics(request: Request) -> Analytics:
    analytics: Analytics = request.app.state.analytics
    return analytics


AnalyticsDep = Annotated["Analytics", Depends(_analytics)]


def _period(start: date, end: date) -> None:
    if end <= start:
        raise ApiError(422, "invalid_period", f"end ({end}) must be after start ({start})")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise ApiError(422, "invalid_period", f"a period is at most {MAX_PERIOD_DAYS} days")


@router.get(
    "/surveys/{survey_id}/results",
    response_model=R.SurveyResults,
    summary="A survey's responses, response rate, NPS, CSAT, choices",
)
async def survey_results(
    survey_id: uuid.UUID,
    analytics: AnalyticsDep,
    _: Reader,
    start: Start,
    end: End,
    by: Annotated[
        Literal["none", "channel", "version", "rank"],
        Query(description="break down by answer channel, survey version or membership rank"),
    ] = "none",
) -> dict[str, Any]:
    """Responses answered in ``[start, end)``; the response rate is invited responses over
    invitations sent before ``end``. NPS = % promoters (9–10) − % detractors (0–6)."""
    _period(start, end)
    return await analytics.run(lambda q: SurveyQueries.of(q).survey_results(survey_id, start, end, by))


@router.get(
    "/forms/results",
    response_model=R.FormResults,
    summary="Submissions per form, sign-ups, consent opt-ins, registrations",
)
async def form_results(
    analytics: AnalyticsDep,
    _: Reader,
    start: Start,
    end: End,
    form_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Per form: submissions in ``[start, end)`` (new customers = sign-ups, and existing
    ones), consent opt-in rates per channel, and for events the registrations now
    (confirmed / waitlisted / cancelled) against capacity."""
    _period(start, end)
    forms = await analytics.run(lambda q: SurveyQueries.of(q).form_results(start, end, form_id))
    return {"start": start.isoformat(), "end": end.isoformat(), "forms": forms}
