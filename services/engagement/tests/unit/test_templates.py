"""Template bounds: the sandbox refuses what would build a huge value or loop for long,
the workers bound time and memory, and production refuses weak delivery settings."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from pydantic import ValidationError

from crm_platform.capability import new_signing_key
from engagement.dispatch.render import (
    MAX_LOOP_ITEMS,
    MAX_NUMBER_BITS,
    MAX_RENDERED_BYTES,
    TemplateLimitError,
    TemplateWorkers,
    check_templates,
    render_parts,
)
from engagement.dispatch.settings import PUBLISHED_MESSAGING_KEY, MessagingSettings
from engagement.surveys import PUBLISHED_SURVEY_SECRETS, SurveySettings


def body(source: str) -> list[dict[str, Any]]:
    return [{"id": "d", "subject": "s", "body": source}]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ 'x' * 10**9 }}", "string or list too long"),
        ("{{ [0] * 10**9 }}", "string or list too long"),
        ("{{ 10**9 * 'x' }}", "string or list too long"),
        ("{{ 9**9**9 }}", f"number too large (more than {MAX_NUMBER_BITS} bits)"),
        ("{{ 9**(9**9) }}", "number too large"),
        ("{{ 2**40 * 2**40 }}", "number too large"),
        (
            "{% for a in range(10**6) %}{% for b in range(10**6) %}x{% endfor %}{% endfor %}",
            "number argument too large",
        ),
        (
            "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}",
            f"loops run more than {MAX_LOOP_ITEMS} times",
        ),
        ("{{ 'x'.ljust(10**9) }}", "number argument too large"),
        ("{{ 'x' | center(10**8) }}", "number argument too large"),
        ("{{ lipsum(10**6) }}", "number argument too large"),
        ("{{ '%0999999999d' % 1 }}", "format width too large"),
        ("{{ '%*d' % (10**8, 1) }}", "format width too large"),
        (
            "{% for i in range(3000) %}{{ 'x' * 100 }}{% endfor %}",
            f"output exceeds {MAX_RENDERED_BYTES} bytes",
        ),
        ("{{ 1 / 0 }}", "template error: ZeroDivisionError"),
    ],
)
def test_the_sandbox_refuses_what_would_build_a_huge_value_or_loop_long(source: str, reason: str) -> None:
    ((field, why),) = check_templates(body(source))
    assert field == "variants.0.body"
    assert reason in why


def test_ordinary_arithmetic_loops_and_repetition_still_render() -> None:
    source = (
        "{{ name }} {{ birth_month * 2 }} {{ 10**9 }} {{ 'ab' * 3 }} {{ range(3) | list }} "
        "{{ '%05.1f' % 3.14159 }} {% for s in segments %}{{ s }}{% endfor %} {{ 'x' | center(7) }}"
    )
    assert check_templates(body(source)) == []
    assert render_parts(body(source)[0], {"name": "A", "birth_month": 4, "segments": ["s"]}).body == (
        "A 8 1000000000 ababab [0, 1, 2] 003.1 s    x   "
    )
    # the loop budget is per render: a thousand renders of range(600) are all fine
    for _ in range(3):
        assert len(render_parts({"body": "{% for i in range(600) %}.{% endfor %}"}, {}).body) == 600


def test_a_render_past_a_bound_raises_naming_the_bound() -> None:
    with pytest.raises(TemplateLimitError, match="string or list too long"):
        render_parts({"body": "{{ name * 100000 }}"}, {"name": "a much longer name"})
    with pytest.raises(TemplateLimitError, match=r"template error: .points. is undefined"):
        render_parts({"body": "{{ points }}"}, {})


# -- the workers ---------------------------------------------------------------------------

SLOW = "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}"


def test_workers_bound_time_and_keep_working_afterwards() -> None:
    async def scenario() -> None:
        workers = TemplateWorkers(workers=1, time_limit_s=0.3)
        try:
            assert await workers.check(body("{{ name }}")) == []
            started = time.monotonic()
            assert await workers.check(body(SLOW)) == [
                ("variants.0.body", "template took too long (over 0.3 s)")
            ]
            assert time.monotonic() - started < 10  # the alarm, not the slack, stopped it
            with pytest.raises(TemplateLimitError, match="took too long"):
                await workers.render_parts({"body": SLOW}, {})
            parts = await workers.render_parts(
                {"subject": "{{ name }}\r\nBcc: x", "body": "b"}, {"name": "A"}
            )
            assert (parts.subject, parts.body, parts.html) == ("A Bcc: x", "b", None)
            # the sandbox's bounds hold in the worker too
            assert await workers.check(body("{{ 'x' * 10**9 }}")) == [
                ("variants.0.body", "string or list too long (more than 262144 items)")
            ]
        finally:
            await workers.aclose()

    asyncio.run(scenario())


def test_a_worker_that_ignores_its_alarm_is_killed_and_replaced() -> None:
    async def scenario() -> None:
        workers = TemplateWorkers(workers=1, time_limit_s=0.2, slack_s=0.5)
        try:
            await workers.start()
            started = time.monotonic()
            with pytest.raises(TemplateLimitError, match="took too long"):
                await workers._run(0.2, time.sleep, 60)  # no alarm set: only the kill stops it
            assert time.monotonic() - started < 30
            assert await workers.check(body("{{ name }}")) == []  # a new pool answers
        finally:
            await workers.aclose()

    asyncio.run(scenario())


def test_a_worker_has_bounded_memory() -> None:
    doubling = (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s | length }}"
    )

    async def scenario() -> list[tuple[str, str]]:
        workers = TemplateWorkers(workers=1, time_limit_s=5.0, memory_bytes=256 * 1024 * 1024)
        try:
            return await workers.check(body(doubling))
        finally:
            await workers.aclose()

    ((field, reason),) = asyncio.run(scenario())
    assert field == "variants.0.body"
    assert reason in ("template needs too much memory", "template took too long (over 5 s)")


# -- production settings of delivery ---------------------------------------------------------

GOOD: dict[str, Any] = {
    "env": "production",
    "messaging_api_key": "a-real-messaging-key",
    "webhook_secret": base64.b64encode(b"w" * 32).decode(),
    "contact_signing_key": new_signing_key()[0],
}


def test_production_accepts_strong_delivery_settings() -> None:
    MessagingSettings(**GOOD)
    MessagingSettings(**GOOD, smtp_username="relay", smtp_password="p", smtp_security="starttls")
    MessagingSettings(**GOOD, smtp_username="relay", smtp_password="p", smtp_security="tls")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"webhook_secret": ""}, "CRM_WEBHOOK_SECRET must be at least 32 characters"),
        ({"webhook_secret": "short"}, "CRM_WEBHOOK_SECRET must be at least 32 characters"),
        ({"smtp_username": "relay", "smtp_password": "p"}, "CRM_SMTP_SECURITY must be starttls or tls"),
        ({"messaging_api_key": PUBLISHED_MESSAGING_KEY}, "set CRM_MESSAGING_API_KEY"),
    ],
)
def test_production_refuses_weak_delivery_settings(change: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        MessagingSettings(**{**GOOD, **change})
    MessagingSettings(**{**GOOD, **change, "env": "development"})  # a laptop may


@pytest.mark.parametrize("name", sorted(PUBLISHED_SURVEY_SECRETS))
def test_production_refuses_the_survey_values_compose_once_published(name: str) -> None:
    good = {
        "env": "production",
        "survey_token_key": base64.b64encode(b"t" * 32).decode(),
        "identity_api_key": "a-real-identity-key",
        "analytics_api_key": "a-real-analytics-key",
    }
    SurveySettings(**good)
    field = name.removeprefix("CRM_").lower()
    with pytest.raises(ValidationError, match=f"published in docker-compose.yml: set {name}"):
        SurveySettings(**{**good, field: PUBLISHED_SURVEY_SECRETS[name]})
