"""Query parameters the analytics routes share: days and instants ClickHouse can hold.

ClickHouse's ``Date32`` and ``DateTime64`` cover 1900-01-01 to 2299-12-31, and Python's
dates stop at year 1 and 9999: a day or an instant outside that range is refused with
422 naming the parameter (it was a 500 from the query or the date arithmetic), and the
OpenAPI says so with a pattern, so a generated client never sends one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2299, 12, 31)
_RANGE = f"from {FIRST_DAY} to {LAST_DAY}"
_YEAR = r"(19\d\d|2[0-2]\d\d)"
_DAY = _YEAR + r"-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
DAY_PATTERN = f"^{_DAY}$"
#: RFC 3339 with an offset (``Z`` or ``±hh:mm``), in the years ClickHouse holds
_TIME = r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?"
_OFFSET = r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
INSTANT_PATTERN = f"^{_DAY}[Tt ]{_TIME}{_OFFSET}$"


def _storable_day(value: date) -> date:
    if not FIRST_DAY <= value <= LAST_DAY:
        raise ValueError(f"must be a day {_RANGE}")
    return value


def _storable_instant(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must include a timezone offset")
    try:
        day = value.astimezone(UTC).date()
    except OverflowError:  # 9999-12-31T23:59-01:00 is past the last instant Python holds
        day = None
    if day is None or not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"must be an instant {_RANGE} (UTC)")
    return value


#: A day (Asia/Tokyo calendar), YYYY-MM-DD, 1900-01-01 to 2299-12-31.
Day = Annotated[
    date,
    AfterValidator(_storable_day),
    WithJsonSchema({"type": "string", "pattern": DAY_PATTERN, "description": f"YYYY-MM-DD, {_RANGE}"}),
]
#: An instant with its offset, 1900-01-01 to 2299-12-31 (UTC).
Instant = Annotated[
    datetime,
    AfterValidator(_storable_instant),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": INSTANT_PATTERN,
            "description": f"RFC 3339 date-time with its offset, {_RANGE} (UTC)",
        }
    ),
]
