"""A hostile campaign template does not stall the engagement API: it is checked in a
worker process while the API goes on answering, and refused with a 422 naming the
field and the reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from crm_platform.settings import Settings
from engagement.dispatch.settings import MessagingSettings
from engagement.entrypoints.api import create

from .conftest import serve

pytestmark = pytest.mark.integration
KEYS = {"staff": ["engagement:read", "engagement:write"]}
#: ten billion iterations of Python code: only the worker's time bound stops it
SLOW = "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}"


def campaign(body: str) -> dict[str, Any]:
    return {
        "name": "春のセール",
        "channels": ["email"],
        "audience": {"customer_ids": [str(uuid.uuid4())]},
        "variants": [{"id": "d", "subject": "s", "body": body}],
        "default_variant": "d",
    }


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[str]:
    var = tmp_path_factory.mktemp("template-limits") / "var"
    settings = Settings(var_dir=var, kafka_bootstrap=kafka_bootstrap, api_keys=KEYS)
    app = create(settings)
    app.state.messaging = MessagingSettings(
        analytics_url="http://127.0.0.1:9", identity_url="http://127.0.0.1:9", template_time_limit_s=2.0
    )
    served = serve(app, "engagement-api")
    try:
        yield next(served).url
    finally:
        next(served, None)


def refusal(response: httpx.Response) -> tuple[int, list[tuple[str, str]]]:
    fields = response.json()["error"].get("fields", [])
    return response.status_code, [(f["field"], f["reason"]) for f in fields]


def test_the_api_answers_while_a_hostile_template_is_refused(api_url: str) -> None:
    async def scenario() -> tuple[httpx.Response, int]:
        async with httpx.AsyncClient(base_url=api_url, headers={"X-API-Key": "staff"}, timeout=60) as http:
            hostile = asyncio.create_task(http.post("/v1/campaigns", json=campaign(SLOW)))
            answered_meanwhile = 0
            # health checks one after another for as long as the check runs: each one
            # answered before the check finished is counted (by order, not by time).
            # An event loop held by the check would answer at most the one that got in
            # before the check started.
            while not hostile.done():
                probe = await http.get("/healthz")
                assert probe.status_code == 200
                answered_meanwhile += not hostile.done()
            return await hostile, answered_meanwhile

    response, answered_meanwhile = asyncio.run(scenario())
    assert refusal(response) == (422, [("body.variants.0.body", "template took too long (over 2 s)")])
    assert answered_meanwhile >= 3
    print(f"health checks answered during the hostile check: {answered_meanwhile}")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ 'x' * 10**9 }}", "string or list too long (more than 262144 items)"),
        ("{{ 9**9**9 }}", "number too large (more than 64 bits)"),
        (
            "{% for a in range(10**6) %}{% for b in range(10**6) %}x{% endfor %}{% endfor %}",
            "number argument too large (at most 262144)",
        ),
        (
            "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}",
            "loops run more than 10000 times (range, all loops together)",
        ),
        ("{% for i in range(9000) %}{{ 'x' * 100 }}{% endfor %}", "output exceeds 262144 bytes"),
    ],
)
def test_each_hostile_template_is_a_422_naming_the_field_and_reason(
    api_url: str, template: str, reason: str
) -> None:
    response = httpx.post(
        f"{api_url}/v1/campaigns", json=campaign(template), headers={"X-API-Key": "staff"}, timeout=60
    )
    assert refusal(response) == (422, [("body.variants.0.body", reason)])
    # and an ordinary campaign is still created by the same workers
    ok = httpx.post(
        f"{api_url}/v1/campaigns", json=campaign("{{ name }}様"), headers={"X-API-Key": "staff"}, timeout=60
    )
    assert ok.status_code == 201, ok.text
