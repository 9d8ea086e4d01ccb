"""The sink against a real Kafka broker and chDB, and the API end to end."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import clickhouse_connect
import factory as f
import httpx
import pytest
from fastapi.testclient import TestClient

from analytics.entrypoints import sink as standalone
from analytics.entrypoints.api import create
from analytics.sink import SINK_TOPICS, Sink
from analytics.store.migrations import migrate
from crm_contracts.registry import encode
from crm_contracts.topics import COMMERCE_ORDER, DEAD_LETTER, by_name
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic

pytestmark = pytest.mark.integration
READ = {"X-API-Key": "dev-read-key"}


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


async def _produce(bootstrap: str, prefix: str, raws: list[tuple[str, bytes | None, bytes]]) -> None:
    async with EventProducer(bootstrap, client_id="test", topic_prefix=prefix) as producer:
        for topic, value, key in raws:
            await producer.publish_raw(topic, value, key=key, headers=[])  # type: ignore[arg-type]


@pytest.mark.parametrize("validators", [0, 2], ids=["checked-here", "checked-in-2-processes"])
def test_sink_inserts_batches_dead_letters_the_invalid_and_commits_only_after(
    kafka_bootstrap: str, tmp_path: Path, validators: int
) -> None:
    prefix = _prefix()
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    orders = [f.store_order(f"m{i}", "2026-02-01", f"o{i}", ("tops", 1, 1_000 + i)) for i in range(50)]
    raws: list[tuple[str, bytes | None, bytes]] = [
        (COMMERCE_ORDER.name, encode(e), e.customer_key.encode()) for e in orders
    ]
    raws.append((COMMERCE_ORDER.name, b"{not json", b"k"))
    bad_total = encode(orders[0]).replace(b'"total":1000', b'"total":"lots"')
    raws.append((COMMERCE_ORDER.name, bad_total, b"k"))
    raws.append((COMMERCE_ORDER.name, encode(orders[1]), orders[1].customer_key.encode()))  # a duplicate
    asyncio.run(_produce(kafka_bootstrap, prefix, raws))

    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    migrate(client)

    async def run_sink() -> tuple[int, dict[str, int], int]:
        async with EventProducer(kafka_bootstrap, client_id="dlq", topic_prefix=prefix) as dlq:
            sink = Sink(
                client,
                bootstrap=kafka_bootstrap,
                topic_prefix=prefix,
                batch_rows=20,
                dead_letter=dlq,
                group_id=f"sink-{prefix}",
                validators=validators,
            )
            await sink.start()
            try:
                handled = await sink.drain(timeout_s=30)
            finally:
                await sink.stop()
            return handled, dict(sink.stats.lag), sink.stats.batches

    handled, lag, batches = asyncio.run(run_sink())
    assert handled == 53
    assert batches >= 3  # batched by size (20 rows)
    assert sum(lag.values()) == 0
    # Every partition assigned has its lag, those this run took nothing from too.
    assert len(lag) == sum(by_name(t).partitions for t in SINK_TOPICS)
    assert client.query("SELECT count() FROM orders FINAL").result_rows == [(50,)]
    assert client.query("SELECT sum(amount) FROM orders FINAL").result_rows == [
        (sum(1_000 + i for i in range(50)),)
    ]
    # the day's aggregates were recomputed after the inserts, the duplicate counted once
    per_day = client.query("SELECT day, sum(orders), sum(gross) FROM kpi_daily FINAL GROUP BY day")
    assert per_day.result_rows == [(date(2026, 2, 1), 50, sum(1_000 + i for i in range(50)))]

    dead = asyncio.run(read_topic(kafka_bootstrap, prefix + DEAD_LETTER.name, 2, timeout=10))
    reasons = sorted(dict(r.headers)["dlq.reason"].decode() for r in dead)
    assert "Invalid JSON" in reasons[0] or "Invalid JSON" in reasons[1]
    assert any("payload.total" in r for r in reasons), reasons

    # Offsets were committed after the insert: a new sink in the same group sees nothing.
    handled_again, _, _ = asyncio.run(run_sink())
    assert handled_again == 0
    assert client.query("SELECT count() FROM events FINAL").result_rows == [(50,)]  # the duplicate collapsed
    client.close()


def test_an_order_on_kafka_reaches_the_kpi_api_within_two_seconds(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = _prefix()
    settings = Settings(var_dir=tmp_path / "var", kafka_bootstrap=kafka_bootstrap, kafka_topic_prefix=prefix)
    today = (datetime.now(UTC) + timedelta(hours=9)).date()
    order = f.store_order("late-shopper", today.isoformat(), "o-fresh", ("shoes", 1, 12_345))
    order = order.model_copy(update={"occurred_at": datetime.now(UTC)})
    params = {"start": today.isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    with TestClient(create(settings)) as api:
        assert api.get("/v1/kpis/overview", params=params, headers=READ).json()["revenue"] == 0
        # the sink is consuming (its group has its partitions) before the clock starts
        deadline = time.monotonic() + 20
        while not api.get("/metrics").text.count("crm_sink_consumer_lag{") and time.monotonic() < deadline:
            time.sleep(0.1)
        asyncio.run(_produce(kafka_bootstrap, prefix, [(COMMERCE_ORDER.name, encode(order), b"k")]))
        produced = time.monotonic()
        revenue = 0
        while time.monotonic() - produced < 2.0:
            revenue = api.get("/v1/kpis/overview", params=params, headers=READ).json()["revenue"]
            if revenue:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - produced
        assert revenue == 12_345, f"not visible after {elapsed:.2f}s"
        # the figures count once the sink's whole batch is done (the data shows as soon
        # as it is inserted, before the daily aggregates and the commit)
        deadline = time.monotonic() + 5
        while "crm_sink_rows_inserted_total 1" not in (metrics := api.get("/metrics").text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.05)
        status = api.get("/v1/status", headers=READ).json()
        assert status["events"] == 1 and status["sink"]["consumer_lag"] == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


_LAG = re.compile(r'^crm_sink_consumer_lag\{topic="([^"]+)",partition="(\d+)"\} (\d+)$', re.MULTILINE)


def test_the_standalone_sink_serves_its_consumer_lag_on_its_metrics_port(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``python -m analytics sink`` as it runs (the same coroutine), on chDB and Kafka:
    /metrics on CRM_SINK_METRICS_PORT has the lag per partition, /healthz answers, and
    the port is let go of when the sink stops."""
    prefix = _prefix()
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    orders = [f.store_order(f"m{i}", "2026-02-01", f"o{i}", ("tops", 1, 1_000)) for i in range(12)]
    raws: list[tuple[str, bytes | None, bytes]] = [
        (COMMERCE_ORDER.name, encode(e), e.customer_key.encode()) for e in orders
    ]
    asyncio.run(_produce(kafka_bootstrap, prefix, raws))
    port = _free_port()
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        sink_metrics_port=port,
        sink_validators=0,
    )

    async def scrape_until_caught_up() -> tuple[str, httpx.Response]:
        stop = asyncio.Event()
        running = asyncio.create_task(standalone.run(settings, stop))
        text = ""
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                deadline = time.monotonic() + 30
                # caught up: every record read, and each partition's lag down to 0 (it is
                # what was taken, less what is committed, until the last commit lands)
                while "crm_sink_records_total 12\n" not in text or {
                    value for *_, value in _LAG.findall(text)
                } != {"0"}:
                    assert not running.done(), running.exception()
                    assert time.monotonic() < deadline, f"not caught up in 30 s; /metrics:\n{text}"
                    await asyncio.sleep(0.1)
                    try:
                        text = (await http.get("/metrics")).text
                    except httpx.ConnectError:  # not listening yet (topics, migrations first)
                        continue
                health = await http.get("/healthz")
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=30)
        return text, health

    text, health = asyncio.run(scrape_until_caught_up())
    lag = {(topic, int(partition)): int(value) for topic, partition, value in _LAG.findall(text)}
    order_topic = prefix + COMMERCE_ORDER.name
    assert order_topic in {topic for topic, _ in lag}
    assert "# TYPE crm_sink_consumer_lag gauge" in text
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.fixture
def api(tmp_path: Path) -> TestClient:
    return TestClient(create(Settings(var_dir=tmp_path / "var"), embedded_sink=False))


def test_bad_requests_get_a_clear_4xx(api: TestClient) -> None:
    with api:
        r = api.get("/v1/kpis/overview", params={"start": "2026-03-01", "end": "2026-02-01"}, headers=READ)
        assert r.status_code == 422 and "end" in r.json()["error"]["message"]
        r = api.get("/v1/kpis/overview", params={"start": "2026-13-01", "end": "2026-02-01"}, headers=READ)
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "query.start"
        r = api.get(
            "/v1/kpis/overview",
            params={"start": "2026-01-01", "end": "2026-02-01", "channel": "fax"},
            headers=READ,
        )
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "query.channel"
        r = api.get(
            "/v1/cohorts", params={"start": "2016-01-01", "end": "2026-01-01", "grain": "week"}, headers=READ
        )
        assert r.status_code == 422 and "at most 256 weeks" in r.json()["error"]["message"]
        series = {"metric": "retention_rate", "start": "2026-01-01", "end": "2026-03-01", "interval": "day"}
        r = api.get("/v1/kpis/timeseries", params=series, headers=READ)
        assert r.status_code == 422 and "at most 36 days" in r.json()["error"]["message"]
        r = api.get("/v1/kpis/timeseries", params={**series, "interval": "week"}, headers=READ)
        assert r.status_code == 200 and len(r.json()["points"]) == 9
        r = api.get("/v1/kpis/timeseries", params={**series, "metric": "happiness"}, headers=READ)
        assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "query.metric"
        r = api.get("/v1/segments/vip/customers", headers=READ)
        assert r.status_code == 404 and "unknown segment" in r.json()["error"]["message"]
        r = api.get(
            "/v1/funnels", params={"steps": "a;b", "start": "2026-01-01", "end": "2026-02-01"}, headers=READ
        )
        assert r.status_code == 422 and "steps" in r.json()["error"]["message"]
        r = api.get("/v1/kpis/overview", params={"start": "2026-01-01", "end": "2026-02-01"})
        assert r.status_code == 401
        r = api.get("/v1/customers/not-a-uuid", headers=READ)
        assert r.status_code == 422
        r = api.get(f"/v1/customers/{uuid.uuid4()}", headers=READ)
        assert r.status_code == 404


def test_a_query_past_its_budget_is_stopped_with_a_clear_error(tmp_path: Path) -> None:
    from crm_platform.http import ApiError

    api = TestClient(create(Settings(var_dir=tmp_path / "var", query_timeout_s=0.5), embedded_sink=False))
    with api:
        analytics = api.app.state.analytics  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            asyncio.run(
                analytics.run(
                    lambda q: q._rows("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 0")
                )
            )
        assert caught.value.status_code == 422 and caught.value.code == "query_budget_exceeded"
        assert time.monotonic() - started < 5
        assert api.get("/healthz").status_code == 200  # and the service goes on


def test_a_query_past_its_memory_budget_gets_a_clear_422_through_the_api(tmp_path: Path) -> None:
    """A million customers' orders (written straight into ``orders``) and a 16 MiB budget,
    the smallest the settings allow: the overview's per-key aggregation needs more, so
    ClickHouse stops it and the API says which budget and what to do; with the default
    budget the same request answers."""
    var = tmp_path / "var"
    client = clickhouse_connect.get_client(dsn=f"chdb://{var / 'analytics' / 'clickhouse'}")
    migrate(client)
    client.command(
        "INSERT INTO orders (event_id, person_key, key_hash, occurred_at, day, kind, channel, amount, items)"
        " SELECT generateUUIDv4(), toString(number), number, toDateTime64('2026-01-10 03:00:00', 3, 'UTC'),"
        " toDate('2026-01-01') + number % 28, 'order', 'store', 1000, 1 FROM numbers(1000000)"
    )
    client.close()
    params = {"start": "2026-01-01", "end": "2026-02-01"}

    tight = Settings(var_dir=var, query_max_memory_bytes=16 * 2**20)
    with TestClient(create(tight, embedded_sink=False)) as api:
        r = api.get("/v1/kpis/overview", params=params, headers=READ)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "query_budget_exceeded"
        message = r.json()["error"]["message"]
        assert "16 MiB memory budget" in message and "narrow the period" in message
        assert api.get("/healthz").status_code == 200  # and the service goes on

    with TestClient(create(Settings(var_dir=var), embedded_sink=False)) as api:
        r = api.get("/v1/kpis/overview", params=params, headers=READ)
        assert r.status_code == 200 and r.json()["active_customers"] == 1_000_000


def test_clickhouse_short_of_memory_is_a_503_not_the_callers_budget(tmp_path: Path) -> None:
    """The server's (or the user's) memory limit is no fault of the request: 503 with
    Retry-After, not 422 telling the caller to narrow a query that fits its budget."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from crm_platform.http import ApiError

    def short_of_memory(_: object) -> None:
        raise DatabaseError(
            "Code: 241. DB::Exception: Memory limit (total) exceeded: would use 3.60 GiB (attempt to"
            " allocate chunk of 4194304 bytes), maximum: 3.60 GiB. (MEMORY_LIMIT_EXCEEDED)"
        )

    api = TestClient(create(Settings(var_dir=tmp_path / "var"), embedded_sink=False))
    with api:
        analytics = api.app.state.analytics  # type: ignore[attr-defined]
        with pytest.raises(ApiError) as caught:
            asyncio.run(analytics.run(short_of_memory))
        assert (caught.value.status_code, caught.value.code) == (503, "unavailable")
        assert "memory" in caught.value.message and caught.value.headers["Retry-After"]


def test_segment_csv_export_and_dates(api: TestClient) -> None:
    with api:
        r = api.get(
            "/v1/segments/new/customers",
            params={"format": "csv", "as_of": date(2026, 1, 1).isoformat()},
            headers=READ,
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert r.text.splitlines()[0] == "customer_id,rfm,orders,revenue,recency_days,first_day,last_day"


def test_replay_rebuilds_the_tables_from_the_log_with_identical_kpis(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from analytics.queries import Queries
    from analytics.replay import replay

    prefix = _prefix()
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    world = [
        f.store_order(
            f"m{i % 7}", f"2026-0{1 + i % 3}-1{i % 9}", f"o{i}", ("tops", 1 + i % 2, 1_000 + 10 * i)
        )
        for i in range(60)
    ]
    world.append(f.returned(world[3], "2026-03-20", 500))
    raws: list[tuple[str, bytes | None, bytes]] = [
        (e.TOPIC, encode(e), e.customer_key.encode()) for e in world
    ]
    asyncio.run(_produce(kafka_bootstrap, prefix, raws))
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    migrate(client)
    group = f"sink-{prefix}"

    async def drain() -> None:
        sink = Sink(client, bootstrap=kafka_bootstrap, topic_prefix=prefix, group_id=group)
        await sink.start()
        try:
            await sink.drain(timeout_s=30)
        finally:
            await sink.stop()

    asyncio.run(drain())
    queries = Queries(client)
    before = queries.kpi_overview(date(2026, 1, 1), date(2026, 4, 1))
    cohorts = queries.cohorts(date(2026, 1, 1), date(2026, 4, 1))
    assert before["orders"] == 60

    result = asyncio.run(replay(client, bootstrap=kafka_bootstrap, group_id=group, topic_prefix=prefix))
    assert result.records == 61
    assert 0 < result.consuming_seconds <= result.seconds  # the pace, start-up aside
    assert result.consuming_rate >= result.rate > 0
    assert queries.kpi_overview(date(2026, 1, 1), date(2026, 4, 1)) == before
    assert queries.cohorts(date(2026, 1, 1), date(2026, 4, 1)) == cohorts
    # The sink's group goes on after the replay: nothing is consumed again.
    asyncio.run(drain())
    assert client.query("SELECT count() FROM events").result_rows == [(61,)]
    client.close()
