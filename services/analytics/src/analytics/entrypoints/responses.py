"""What the analytics API answers, as response models: the OpenAPI documents each
answer's shape and FastAPI checks the queries' dicts against it. Every model admits
fields beyond those named (``extra="allow"``), so a figure added to a query reaches
callers before it is documented here, and a documented one is never dropped."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Ratio = float | None
Number = float | int


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Period(_Open):
    start: str = Field(description="YYYY-MM-DD, inclusive")
    end: str = Field(description="YYYY-MM-DD, exclusive")
    days: int | None = None


class KpiOverview(_Open):
    period: Period
    previous_period: Period
    channel: str
    active_customers: int
    new_customers: int
    repeat_customers: int
    repeat_purchase_rate: Ratio
    retention_rate: Ratio
    churn_rate: Ratio
    purchase_frequency: Ratio
    orders: int
    revenue: Number
    anonymous_revenue: Number
    aov: Ratio
    historical_ltv: Ratio
    cross_sell_rate: Ratio
    up_sell_rate: Ratio
    omnichannel_share: Ratio


class Point(_Open):
    bucket: str = Field(description="the bucket's first day, YYYY-MM-DD")
    value: Number | None


class Timeseries(_Open):
    metric: str
    interval: str
    channel: str
    points: list[Point]


class Cohort(_Open):
    cohort: str = Field(description="the first-purchase month (week), YYYY-MM-DD")
    size: int
    counts: list[int]
    rates: list[Ratio]


class Cohorts(_Open):
    grain: str
    channel: str
    offsets: list[int]
    cohorts: list[Cohort]


class SegmentSize(_Open):
    segment: str
    customers: int
    revenue: Number
    avg_orders: Number
    avg_recency_days: Number


class RfmCount(_Open):
    rfm: str = Field(description="R1F1M1 … R5F5M5")
    customers: int


class Segments(_Open):
    as_of: str
    channel: str
    rules: dict[str, Any]
    segments: list[SegmentSize]
    rfm: list[RfmCount]


class SegmentMember(_Open):
    customer_id: str
    rfm: str
    orders: int
    revenue: Number
    recency_days: int
    first_day: str
    last_day: str


class SegmentMembers(_Open):
    segment: str
    as_of: str
    limit: int
    offset: int
    customers: list[SegmentMember]


class FunnelStep(_Open):
    step: str
    customers: int
    conversion_from_first: Ratio
    conversion_from_previous: Ratio


class Funnel(_Open):
    window_seconds: int
    steps: list[FunnelStep]


class CustomerSummary(_Open):
    customer_id: str
    status: str
    merged_into: str | None
    attributes: dict[str, Any]
    consents: dict[str, bool]
    rank: str | None
    orders: int
    revenue: Number
    points: Number
    channels: list[str]
    events: int
    first_event: str | None
    last_event: str | None
    keys: int
    tickets: dict[str, Any]


class TimelineEvent(_Open):
    event_id: str
    event_type: str
    occurred_at: str


class Timeline(_Open):
    customer_id: str
    events: list[TimelineEvent]


class Status(_Open):
    events: int
    last_ingested: str | None
    sink: dict[str, Any] | None


class SupportKpis(_Open):
    start: str
    end: str
    by: str
    filters: dict[str, str | None]
    groups: list[dict[str, Any]]
    total: dict[str, Any]


class CustomerTickets(_Open):
    customer_id: str
    total: int
    open: int
    complaints: int
    last_opened_at: str | None
    tickets: list[dict[str, Any]]


class FormResults(_Open):
    start: str
    end: str
    forms: list[dict[str, Any]]


class SurveyResults(_Open):
    survey_id: str
    start: str
    end: str
    by: str
    invitations: int
    responses: int
    invited_responses: int
    anonymous_responses: int
    respondents: int
    response_rate: Ratio
    groups: list[dict[str, Any]]
    questions: dict[str, Any]


class CampaignSummary(_Open):
    campaign_id: str
    name: str
    channels: list[str]
    recipients: int
    holdout: int
    send_at: str
    sent: int
    opened: int
    clicked: int


class CampaignReport(_Open):
    campaign_id: str
    name: str | None
    channels: list[str]
    send_at: str
    recipients: int
    holdout: int
    recorded: int
    sent: int
    failed: int
    skipped: dict[str, int]
    delivered: int
    bounced: int
    opened: int
    clicked: int
    opted_out: int
    open_rate: Ratio
    click_rate: Ratio
    by_variant: list[dict[str, Any]]
    conversion: dict[str, Any]
    uplift: dict[str, Any]
