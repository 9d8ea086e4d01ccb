"""Schemathesis against engagement's published OpenAPI: every operation the app documents
(read from its OpenAPI, so a new route is fuzzed without touching this file),
authenticated with a key holding every scope, in process against a real event store.

No generated request may end in a server error, and every answer must have a status the
operation documents and match the schema documented for it. Seeded and derandomised,
and bounded: the coverage phase's valid boundary values, the schema's examples and
``FUZZ_MAX_EXAMPLES`` (crm_platform.testing) generated cases (valid and invalid) per operation."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python.asgi import shutdown_lifespans

from crm_platform.settings import Settings
from crm_platform.testing import FUZZ_MAX_EXAMPLES, call_as_documented, openapi_fuzz_schema
from engagement.dispatch.settings import MessagingSettings
from engagement.entrypoints.api import create
from engagement.surveys import SurveySettings

pytestmark = pytest.mark.integration


def _closed_port() -> str:
    """A loopback address nothing listens on: identity and analytics, as this API's
    clients see them, are down, so the routes that call them answer their documented
    503 and nothing leaves the machine (the dispatcher, which sends, is not started)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# Schemathesis reads the operations when this module is collected, so the app is made
# here; it starts (lifespan: the producer, the stores of orders, members, campaigns,
# surveys and forms) on the first request and stops in ``_running`` below.
_VAR = Path(tempfile.mkdtemp(prefix="engagement-fuzz-"))
_APP = create(
    Settings(var_dir=_VAR / "var", kafka_bootstrap=os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
)
_DOWN = _closed_port()
_APP.state.messaging = MessagingSettings(identity_url=_DOWN, analytics_url=_DOWN)
# every generated submission comes from one address: no rate limit in the way
_APP.state.survey_settings = SurveySettings(
    identity_url=_DOWN, analytics_url=_DOWN, form_rate_per_minute=100_000
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
