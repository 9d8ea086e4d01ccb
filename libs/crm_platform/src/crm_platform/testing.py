"""Helpers for tests that read what really reached the broker (no mocks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

#: aiokafka ships no type information; records are ConsumerRecord[bytes, bytes].
Record: TypeAlias = Any


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def list_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete throwaway topics (a test session's, a benchmark's), a hundred per request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        for start in range(0, len(names), 100):
            await admin.delete_topics(names[start : start + 100])
    finally:
        await admin.close()


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from the broker's description of it. (A consumer's own
    metadata, refreshed for no topic in particular, can come back without the topic:
    an empty assignment then reads nothing, silently.)"""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described.get("partitions") or ()]
    if not partitions:
        raise LookupError(f"topic {topic} has no partitions on {bootstrap}: {described.get('error_code')}")
    return sorted(partitions)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Where ``topic`` ends now: read from here to see only what a test produces next."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    *,
    timeout: float = 30,
    start: Mapping[TopicPartition, int] | None = None,
    match: Callable[[Record], bool] | None = None,
) -> list[Record]:
    """Records of ``topic`` (from ``start`` or the beginning) that satisfy ``match``,
    returned once at least ``expect`` arrived and the topic has been quiet for a moment,
    so that duplicates beyond ``expect`` are seen too."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    partitions = await partitions_of(bootstrap, topic)
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        consumer.assign(partitions)
        for tp in partitions:
            if start and tp in start:
                consumer.seek(tp, start[tp])
            else:
                await consumer.seek_to_beginning(tp)
        quiet_rounds = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            got = [r for rs in batch.values() for r in rs if match is None or match(r)]
            records.extend(got)
            quiet_rounds = 0 if got else quiet_rounds + 1
            if len(records) >= expect and quiet_rounds >= 2:
                break
    finally:
        await consumer.stop()
    return records


# -- fuzzing an API from its own OpenAPI (Schemathesis, a dev dependency: imported only
# by the services' test_openapi_fuzz modules, which call these) -------------------------

#: The development admin key (scope ``*``): the fuzzer reaches every operation.
FUZZ_KEY = "dev-admin-key"
#: Generated cases per operation, beside the coverage phase's boundary values and the
#: schema's examples: a bound that keeps the four APIs' fuzzing near a minute and a half.
FUZZ_MAX_EXAMPLES = 10


def openapi_fuzz_schema(app: Any) -> Any:
    """A Schemathesis schema of ``app``'s own OpenAPI, seeded, its requests sent to the
    app in process. Read from the app object, not over ASGI: a request would start the
    app's lifespan while pytest collects (and leave it running when the module is
    deselected)."""
    import schemathesis

    config = schemathesis.Config.from_dict(
        {"seed": 17, "phases": {"coverage": {"unexpected-methods": [], "generation": {"mode": "positive"}}}}
    )
    schema = schemathesis.openapi.from_dict(app.openapi(), config=config)
    schema.app = app
    schema.location = "/openapi.json"
    return schema


def call_as_documented(case: Any) -> None:
    """Send a generated case with the admin key: no server error, a documented status,
    an answer matching the documented schema."""
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    checks = [not_a_server_error, response_schema_conformance, status_code_conformance]
    case.call_and_validate(headers={"X-API-Key": FUZZ_KEY}, checks=checks)
