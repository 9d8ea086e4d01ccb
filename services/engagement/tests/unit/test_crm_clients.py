"""The identity and analytics clients at the HTTP boundary: how their answers become
results, field errors (422) or 'retry later' (503)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from engagement.adapters.crm_clients import (
    AnalyticsClient,
    IdentityClient,
    NotHeld,
    UpstreamRejected,
    UpstreamUnavailable,
)


def _identity(handler: httpx.MockTransport) -> IdentityClient:
    return IdentityClient("http://identity", "k", transport=handler)


def test_a_registration_conflict_is_retried_then_answered() -> None:
    customer = uuid.uuid4()
    answers = iter(
        [
            httpx.Response(409, json={}),
            httpx.Response(200, json={"customer_id": str(customer), "outcome": "matched", "held": ["email"]}),
        ]
    )
    paths = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return next(answers)

    client = _identity(httpx.MockTransport(answer))
    result = asyncio.run(client.intake({"channel": "form", "email": "a@b.jp"}))
    assert (result.customer_id, result.outcome, result.held) == (customer, "matched", ("email",))
    assert paths == ["/customers/intake"] * 2  # the public intake, never POST /customers


def test_identity_field_errors_name_the_form_field() -> None:
    body = {
        "error": {"message": "postal_code: bad", "fields": [{"field": "body.postal_code", "reason": "bad"}]}
    }
    client = _identity(httpx.MockTransport(lambda request: httpx.Response(422, json=body)))
    with pytest.raises(UpstreamRejected) as caught:
        asyncio.run(client.intake({}))
    assert caught.value.fields[0]["field"] == "fields.postal_code"


@pytest.mark.parametrize("status", [500, 503])
def test_identity_failing_is_unavailable(status: int) -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={})

    with pytest.raises(UpstreamUnavailable):
        asyncio.run(_identity(httpx.MockTransport(answer)).intake({}))
    assert len(calls) == (3 if status == 503 else 1)  # 503 is retried, a 500 is not


def test_a_confirmation_for_an_address_nobody_holds_is_not_held() -> None:
    client = _identity(httpx.MockTransport(lambda request: httpx.Response(404, json={})))
    with pytest.raises(NotHeld):
        asyncio.run(client.confirm_consent({}))
    customer = uuid.uuid4()
    done = _identity(
        httpx.MockTransport(
            lambda request: httpx.Response(200, json={"customer_id": str(customer), "version": 3})
        )
    )
    assert asyncio.run(done.confirm_consent({})) == customer


def test_segment_pages_stop_at_the_limit_or_the_end() -> None:
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        seen.append((offset, limit))
        rows = [{"customer_id": f"c{i}"} for i in range(offset, min(offset + limit, 5))]
        return httpx.Response(200, json={"customers": rows})

    client = AnalyticsClient("http://analytics", "k", transport=httpx.MockTransport(answer))
    client.PAGE = 2
    assert asyncio.run(client.segment_customers("loyal", 10)) == [f"c{i}" for i in range(5)]
    assert seen == [(0, 2), (2, 2), (4, 2)]
    seen.clear()
    assert asyncio.run(client.segment_customers("loyal", 3)) == ["c0", "c1", "c2"]
    assert seen == [(0, 2), (2, 1)]
