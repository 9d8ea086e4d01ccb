"""Schemathesis against analytics's published OpenAPI: every operation the app documents
(read from its OpenAPI, so a new route is fuzzed without touching this file),
authenticated with a key holding every scope, in process against a real event store.

No generated request may end in a server error, and every answer must have a status the
operation documents and match the schema documented for it. Seeded and derandomised,
and bounded: the coverage phase's valid boundary values, the schema's examples and
``FUZZ_MAX_EXAMPLES`` (crm_platform.testing) generated cases (valid and invalid) per operation."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python.asgi import shutdown_lifespans

from analytics.entrypoints.api import create
from crm_platform.settings import Settings
from crm_platform.testing import FUZZ_KEY, FUZZ_MAX_EXAMPLES, call_as_documented, openapi_fuzz_schema

pytestmark = pytest.mark.integration

# Schemathesis reads the operations when this module is collected, so the app is made
# here; it starts (lifespan: an embedded ClickHouse, chDB, migrated) on the first
# request and stops in ``_running`` below. No sink: the data stays empty, the queries real.
_VAR = Path(tempfile.mkdtemp(prefix="analytics-fuzz-"))
_APP = create(
    Settings(var_dir=_VAR / "var", kafka_bootstrap=os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")),
    embedded_sink=False,
)
schema = openapi_fuzz_schema(_APP)


@pytest.fixture(scope="module", autouse=True)
def _running(kafka_bootstrap: str) -> Iterator[None]:
    yield
    shutdown_lifespans()
    shutil.rmtree(_VAR, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=FUZZ_MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    call_as_documented(case)


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        # what an outside fuzzer found: a year ClickHouse's DateTime64 cannot hold (was 500)
        ("/v1/customers/{customer_id}/timeline", {"before": "0223-06-24T18:43:31+06:20"}, "query.before"),
        # past Python's last instant once moved to UTC (was 500)
        ("/v1/customers/{customer_id}/timeline", {"before": "9999-12-31T23:59:59-23:59"}, "query.before"),
        ("/v1/customers/{customer_id}/timeline", {"before": "2026-01-01T00:00:00"}, "query.before"),
        # the previous period of year 1 is before Python's first day (was 500)
        ("/v1/kpis/overview", {"start": "0001-01-01", "end": "0002-01-01"}, "query.start"),
        ("/v1/support/kpis", {"start": "2026-01-01", "end": "2300-01-01"}, "query.end"),
        ("/v1/segments", {"as_of": "1899-12-31"}, "query.as_of"),
    ],
)
def test_days_and_instants_clickhouse_cannot_hold_are_a_422_naming_the_parameter(
    path: str, query: dict[str, str], field: str
) -> None:
    operation = schema[path]["GET"]
    params = {"customer_id": "00000000-0000-4000-8000-000000000001"} if "{customer_id}" in path else {}
    case = operation.Case(path_parameters=params, query=query)
    response = case.call(headers={"X-API-Key": FUZZ_KEY})
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["error"]["fields"]]
    fixed = operation.Case(path_parameters=params, query={**query, **_IN_RANGE[field]})
    assert fixed.call(headers={"X-API-Key": FUZZ_KEY}).status_code == 200


#: the same request with the parameter at fault inside the range: answered
_IN_RANGE = {
    "query.before": {"before": "2026-01-01T00:00:00+09:00"},
    "query.start": {"start": "2026-01-01", "end": "2026-02-01"},
    "query.end": {"end": "2026-02-01"},
    "query.as_of": {"as_of": "2026-01-01"},
}
