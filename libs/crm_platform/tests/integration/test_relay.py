"""The outbox relay on real event stores (SQLite and PostgreSQL) and a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from opentelemetry import trace

from crm_contracts.registry import EventRegistry
from crm_platform.kafka import EventConsumer, EventProducer, SQLiteDedupeStore
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from crm_platform.telemetry import in_memory_exporter

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = pytest.mark.integration

WORKER = Path(__file__).parent / "relay_worker.py"


@pytest.fixture
def notes_topic(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import asyncio

    from crm_platform.testing import create_topic

    name = f"crm.test.notes.{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topic(kafka_bootstrap, name))
    monkeypatch.setenv("CRM_TEST_NOTES_TOPIC", name)
    import relay_app

    monkeypatch.setattr(relay_app.NoteWritten, "TOPIC", name)
    return name


def _notes(settings: Settings):  # type: ignore[no-untyped-def]
    import relay_app

    return relay_app.Notes(env=settings.eventsourcing_env("notes"))


async def test_relay_publishes_every_event_once_with_its_trace(
    store_settings: Settings, kafka_bootstrap: str, notes_topic: str
) -> None:
    import relay_app

    from crm_platform.testing import read_topic

    spans = in_memory_exporter()
    app = _notes(store_settings)
    app.write_many([f"note {i}" for i in range(120)])
    with trace.get_tracer("test").start_as_current_span("POST /notes") as request_span:
        traced_id = app.write("traced note")
    request_trace_id = format(request_span.get_span_context().trace_id, "032x")

    async with EventProducer(kafka_bootstrap, client_id="t") as producer:
        relay = OutboxRelay(
            name="notes.kafka-relay",
            recorder=app.recorder,
            mapper=app.mapper,  # type: ignore[arg-type]
            tracking=app.factory.tracking_recorder(),
            translate=relay_app.translate,
            producer=producer,
            batch_size=50,
        )
        assert relay.lag() == 121
        while await relay.relay_once():
            pass
        assert relay.position() == app.recorder.max_notification_id()
        assert relay.lag() == 0
        assert await relay.relay_once() == 0  # nothing new: nothing re-sent

    records = await read_topic(kafka_bootstrap, notes_topic, expect=121)
    assert len(records) == 121
    bodies = [orjson.loads(r.value) for r in records]
    assert len({b["event_id"] for b in bodies}) == 121
    traced = next(
        b for b, r in zip(bodies, records, strict=True) if b["payload"]["note_id"] == str(traced_id)
    )
    # The event carries the request's trace, and the Kafka record continues it.
    assert traced["trace"]["traceparent"].split("-")[1] == request_trace_id
    record = next(r for r in records if orjson.loads(r.value)["payload"]["note_id"] == str(traced_id))
    header = dict(record.headers)["traceparent"].decode()
    assert header.split("-")[1] == request_trace_id
    assert record.key == str(traced_id).encode()
    publish_spans = [s for s in spans.get_finished_spans() if s.name == f"publish {notes_topic}"]
    assert any(format(s.context.trace_id, "032x") == request_trace_id for s in publish_spans)
    app.close()


async def test_sigkill_between_produce_and_position_commit_resends_and_never_skips(
    store_settings: Settings, kafka_bootstrap: str, notes_topic: str, tmp_path: Path
) -> None:
    import relay_app

    from crm_platform.testing import read_topic

    app = _notes(store_settings)
    app.write_many([f"note {i}" for i in range(500)])
    env = json.dumps(store_settings.eventsourcing_env("notes"))
    base = [sys.executable, str(WORKER), "--env", env, "--bootstrap", kafka_bootstrap, "--batch-size", "100"]
    proc_env = {**os.environ, "CRM_TEST_NOTES_TOPIC": notes_topic}

    crashed = subprocess.run(
        [*base, "--crash-after-batch", "3"],
        env=proc_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    assert "crashing after acks of batch 3" in crashed.stdout
    tracking = app.factory.tracking_recorder()
    assert tracking.max_tracking_id("notes.kafka-relay") == 200  # batch 3 acked, not recorded

    resumed = subprocess.run(base, env=proc_env, capture_output=True, text=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["position"] == 500

    records = await read_topic(kafka_bootstrap, notes_topic, expect=600)
    ids = Counter(orjson.loads(r.value)["event_id"] for r in records)
    texts = {orjson.loads(r.value)["payload"]["text"] for r in records}
    assert texts == {f"note {i}" for i in range(500)}  # none missing
    assert len(ids) == 500
    # At least the third batch went out twice (later ones may have been in flight too),
    # always with the same event ids.
    resent = sum(ids.values()) - 500
    assert resent >= 100

    # The consumer helper hands each event_id to its handler once.
    seen: list[str] = []

    async def handler(event, record):  # type: ignore[no-untyped-def]
        seen.append(str(event.event_id))

    consumer = EventConsumer(
        kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:6]}",
        topics=[notes_topic],
        handler=handler,
        dedupe=SQLiteDedupeStore(tmp_path / "dedupe.sqlite"),
        event_registry=EventRegistry([relay_app.NoteWritten]),
    )
    await consumer.start()
    try:
        for _ in range(60):
            await consumer.poll_once(timeout_ms=500)
            if consumer.stats.handled + consumer.stats.duplicates >= 500 + resent:
                break
    finally:
        await consumer.stop()
    assert len(seen) == 500
    assert set(seen) == set(ids)
    assert consumer.stats.duplicates == resent
    app.close()
