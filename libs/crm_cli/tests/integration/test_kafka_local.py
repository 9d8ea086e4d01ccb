"""Integration test: a real local broker on a private data dir and a free port.

Uses the shared jar cache (~/.cache/crm/kafka, or $CRM_KAFKA_CACHE), so only the very
first run on a machine downloads anything. Needs Java 17+ (and Maven if not cached).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_cli.kafka_local import HOST, LocalKafka, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def free_port_pair() -> int:
    """A port p such that p (broker) and p + 1 (controller) are both free right now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((HOST, 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((HOST, port + 1))
                except OSError:
                    continue
        return int(port)
    raise RuntimeError("no two consecutive free ports found")


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalKafka]:
    # A JVM under libfaketime did not get ready within 60 s (the suite's run a year ahead,
    # scripts/test.sh): the broker runs at the real time, like the suite's own.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    kafka = LocalKafka(data_dir=tmp_path / "kafka", port=free_port_pair())
    if shutil.which("java") is None or (not kafka.jars_cached() and shutil.which("mvn") is None):
        pytest.skip("needs java (and mvn unless the Kafka jars are cached)")
    try:
        yield kafka
    finally:
        kafka.stop()  # never leave a JVM behind, even when an assertion failed


async def roundtrip(bootstrap: str) -> None:
    """Produce one message to an auto-created topic and read it back in a group."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"crm-it-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"customer-1")
    finally:
        await producer.stop()

    # A consumer group exercises __consumer_offsets (replication factor 1).
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="crm-it",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"customer-1", b"hello")


def test_start_is_idempotent_serves_clients_and_stops(broker: LocalKafka) -> None:
    assert broker.start(timeout=120) is True
    pid = broker.managed_pid()
    assert pid is not None
    assert (broker.storage_dir / "meta.properties").exists()

    # A second start finds the running broker and reuses it.
    assert broker.start(timeout=30) is False
    assert broker.managed_pid() == pid

    status = broker.status()
    assert status.running
    assert status.pid == pid
    assert status.jars_cached
    assert status.cluster_id == broker.cluster_id()

    asyncio.run(roundtrip(broker.bootstrap))

    assert broker.stop(timeout=60) == pid
    assert not port_open(HOST, broker.port)
    assert not broker.pid_file.exists()
    assert broker.status().running is False
    assert broker.stop() is None  # already stopped: no-op
