"""Erase a person through the real APIs and processes, then look for them everywhere.

identity (API, relay), support (API, relay, eraser) and engagement (API, eraser) run as
processes on real Kafka, on SQLite files and on PostgreSQL databases. A person registers
with identity, writes to support and buys online; a second person does the same and is
not erased (the control: the scans find what is there). After ``POST
/customers/{id}/erase`` and the erasers (support's tickets, engagement's ledger),
every store file (SQLite database, -wal, -shm, the de-duplication and index files),
every row of every PostgreSQL table, the PostgreSQL key tables' files and every record
(key, value, headers) of every Kafka topic are searched for the person's identifiers —
plain (e-mail, phone, name) and as blind indexes computed with the same key — and for
their wrapped data keys.

What the scan must find nowhere: the plain identifiers, the wrapped keys, the blind
indexes in the key tables, identity's match index, support's ticket index and
engagement's ingestion ledger.
What it still finds, by design, is pinned in ``KNOWN_RESIDUE`` (docs/security.md, "What
erasure removes, and key rotation"): the blind indexes in the immutable event logs
(identity's and support's event stores, and the Kafka topics) — the join keys of the
platform, not personal data without the blind-index key. A new place holding them, or
one that stops, fails this test, so the documented list stays true.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import normalise
from crm_platform.kafka import ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import end_offsets, list_topics, read_topic

pytestmark = pytest.mark.integration
ADMIN = {"X-API-Key": "dev-admin-key"}
ERASED = {"name": "消去 太郎", "email": "Erase.Me+crm@Example.jp", "phone": "090-4321-8765"}
KEPT = {"name": "残留 花子", "email": "keep.me@example.jp", "phone": "080-1111-2222"}

#: Where the erased person's blind indexes remain by design (place → why), and nothing else.
KNOWN_RESIDUE = {
    # identity's event store: Customer and IdentifierClaim events are immutable (the
    # claims are released, the customer is marked erased; the match index row is gone)
    "identity store",
    # support's event store: a ticket's identifiers (its content is shredded with its key)
    "support store",
    # the published events: identity's decisions, the ticket events, and the erasure
    # notice itself, which names the identifiers so that every service finds its records
    "kafka crm.identity.customer",
    "kafka crm.support.ticket",
    # the orders, keyed and attributed by the blind index of their strongest identifier
    "kafka crm.commerce.order",
}


@dataclass
class Platform:
    kind: str
    var_dir: Path
    prefix: str
    bootstrap: str
    env: dict[str, str]
    databases: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(platform: Platform, service: str, role: str, tmp_path: Path) -> None:
    env = {**os.environ, **platform.env}
    if platform.kind == "postgres":
        env["CRM_POSTGRES_DB"] = platform.databases[service]
    args = [sys.executable, "-m", service, role]
    if role == "api":
        port = _free_port()
        args += ["--port", str(port)]
        platform.urls[service] = f"http://127.0.0.1:{port}"
    log = (tmp_path / f"{service}-{role}.log").open("wb")
    platform.processes.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
    if role == "api":
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{platform.urls[service]}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if platform.processes[-1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{service} api did not start:\n{(tmp_path / f'{service}-api.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)


@pytest.fixture(params=["sqlite", "postgres"])
def platform(request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str) -> Iterator[Platform]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    var_dir = tmp_path / "var"
    env = {
        "CRM_VAR_DIR": str(var_dir),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": prefix,
        "CRM_EVENT_STORE": request.param,
        "CRM_LOG_LEVEL": "WARNING",
    }
    p = Platform(request.param, var_dir, prefix, kafka_bootstrap, env)
    if request.param == "postgres":
        p.port = request.getfixturevalue("postgres_server")
        env["CRM_POSTGRES_PORT"] = str(p.port)
        with psycopg.connect(
            host="127.0.0.1", port=p.port, user="crm", password="crm", dbname="crm_test", autocommit=True
        ) as admin:
            for service in ("identity", "support", "engagement"):
                p.databases[service] = f"crm_t_{uuid.uuid4().hex[:12]}"
                admin.execute(f'CREATE DATABASE "{p.databases[service]}"')
    try:
        _start(p, "identity", "api", tmp_path)
        _start(p, "support", "api", tmp_path)
        _start(p, "engagement", "api", tmp_path)
        roles = (("identity", "relay"), ("support", "relay"), ("support", "eraser"), ("engagement", "eraser"))
        for service, role in roles:
            _start(p, service, role, tmp_path)
        yield p
    finally:
        for process in p.processes:
            process.terminate()
        for process in p.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _register(platform: Platform, person: dict[str, str]) -> str:
    body = {
        "channel": "store",
        "name_kanji": person["name"],
        "email": person["email"],
        "phone": person["phone"],
        "consents": {"email": True},
    }
    r = httpx.post(f"{platform.urls['identity']}/customers", json=body, headers=ADMIN, timeout=30)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["customer_id"])


def _buy(platform: Platform, person: dict[str, str], order_id: str) -> None:
    """An online order carrying the person's e-mail and phone: the ingestion ledger records it
    under the e-mail's blind index."""
    body = {
        "type": "online_order",
        "occurred_at": "2026-11-20T10:15:00+09:00",
        "identifiers": {"email": person["email"], "phone": person["phone"]},
        "payload": {
            "order_id": order_id,
            "total": 3980,
            "lines": [{"line_no": 1, "sku": "TS-001", "category": "tops", "quantity": 2, "unit_price": 1990}],
        },
    }
    r = httpx.post(
        f"{platform.urls['engagement']}/v1/events",
        json=body,
        headers={"X-API-Key": "dev-shop-key"},
        timeout=30,
    )
    assert r.status_code == 202, r.text


def _write_to_support(platform: Platform, person: dict[str, str]) -> str:
    body = {
        "channel": "email",
        "category": "delivery",
        "subject": f"{person['name']}です",
        "body": f"{person['name']}です。{person['phone']} か {person['email']} にご連絡ください",
        "customer": {"email": person["email"], "phone": person["phone"], "name": person["name"]},
    }
    r = httpx.post(f"{platform.urls['support']}/v1/tickets", json=body, headers=ADMIN, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["ticket_id"])


def _needles(person: dict[str, str]) -> dict[str, bytes]:
    """What must not be found: the identifiers as written and normalised, and their
    blind indexes under the platform's (development) key."""
    indexer = BlindIndexer(Settings().blind_index_key_bytes)
    out = {
        "name": person["name"].encode(),
        "name (no space)": person["name"].replace(" ", "").encode(),
        "email": person["email"].encode(),
        "phone": person["phone"].encode(),
    }
    for kind in ("email", "phone"):
        value = normalise(kind, person[kind])
        out[f"{kind} normalised"] = value.encode()
        out[f"{kind} blind index"] = indexer.index(kind, value).encode()
    return out


def _sqlite_files(platform: Platform) -> dict[str, bytes]:
    """Every file the services keep under var/, grouped as a place: 'identity store'
    (its events.sqlite with -wal and -shm), 'support index', 'support dedupe'..."""
    places: dict[str, bytes] = {}
    for path in sorted(platform.var_dir.rglob("*")):
        if not path.is_file() or "kafka" in path.parts:
            continue
        service = path.relative_to(platform.var_dir).parts[0]
        name = path.name.split(".sqlite")[0]
        kind = {"events": "store"}.get(name, "dedupe" if "dedupe" in path.name else name)
        places.setdefault(f"{service} {kind}", b"")
        places[f"{service} {kind}"] += path.read_bytes()
    return places


def _postgres_rows(platform: Platform) -> dict[str, bytes]:
    """Every row of every table of each service's database, as text (bytea as hex)."""
    places: dict[str, bytes] = {}
    for service, db in platform.databases.items():
        with psycopg.connect(
            host="127.0.0.1", port=platform.port, user="crm", password="crm", dbname=db, autocommit=True
        ) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ]
            text = []
            for table in tables:
                rows = conn.execute(f'SELECT t::text FROM "{table}" t').fetchall()
                text += [r[0] for r in rows]
                # The events' state is bytea (JSON inside): its bytes too, not only its hex.
                if table.startswith("stored_") or table.endswith("_events"):
                    for (state,) in conn.execute(f'SELECT state FROM "{table}"').fetchall():
                        text.append(bytes(state).decode("utf-8", "replace"))
            kind = "store"
            places[f"{service} {kind}"] = "\n".join(text).encode()
    return places


def _postgres_key_files(platform: Platform) -> bytes:
    """The key tables' files in the server's data directory (as a superuser, after a
    CHECKPOINT: the local cluster trusts its superuser on 127.0.0.1)."""
    out = b""
    for service, table in (("identity", "customer_data_keys"), ("support", "ticket_data_keys")):
        with psycopg.connect(
            host="127.0.0.1",
            port=platform.port,
            user="postgres",
            dbname=platform.databases[service],
            autocommit=True,
        ) as admin:
            admin.execute("CHECKPOINT")
            data_dir = admin.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
            rel = admin.execute("SELECT pg_relation_filepath(%s)", (table,)).fetchone()[0]  # type: ignore[index]
        out += b"".join(f.read_bytes() for f in Path(data_dir).glob(rel + "*"))
    return out


def _kafka(platform: Platform) -> dict[str, bytes]:
    async def read() -> dict[str, bytes]:
        places = {}
        for topic in sorted(
            t for t in await list_topics(platform.bootstrap) if t.startswith(platform.prefix)
        ):
            total = sum((await end_offsets(platform.bootstrap, topic)).values())
            records = await read_topic(platform.bootstrap, topic, total, timeout=30) if total else []
            assert len(records) >= total, f"read {len(records)} of {total} records of {topic}"
            data = b"".join(
                (r.key or b"") + (r.value or b"") + b"".join(v for _, v in (r.headers or ())) for r in records
            )
            places[f"kafka {topic.removeprefix(platform.prefix)}"] = data
        return places

    return asyncio.run(read())


def _wrapped_keys(platform: Platform) -> dict[str, bytes]:
    """Every wrapped data key in the key tables now, by key id."""
    found: dict[str, bytes] = {}
    for service, table in (("identity", "customer_data_keys"), ("support", "ticket_data_keys")):
        query = f"SELECT key_id, wrapped_key FROM {table} WHERE wrapped_key IS NOT NULL"
        if platform.kind == "sqlite":
            with sqlite3.connect(platform.var_dir / service / "events.sqlite") as db:
                rows = db.execute(query).fetchall()
        else:
            with psycopg.connect(
                host="127.0.0.1",
                port=platform.port,
                user="crm",
                password="crm",
                dbname=platform.databases[service],
            ) as conn:
                rows = conn.execute(query).fetchall()
        found.update({r[0]: bytes(r[1]) for r in rows})
    return found


def _where(places: dict[str, bytes], needles: dict[str, bytes]) -> dict[str, set[str]]:
    """needle name → the places it was found in."""
    return {name: {p for p, data in places.items() if needle in data} for name, needle in needles.items()}


def _wait(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_an_erased_person_is_found_nowhere_but_the_documented_event_logs(platform: Platform) -> None:
    erased_id = _register(platform, ERASED)
    kept_id = _register(platform, KEPT)
    assert erased_id != kept_id
    erased_ticket = _write_to_support(platform, ERASED)
    kept_ticket = _write_to_support(platform, KEPT)
    _buy(platform, ERASED, "W-ERASE-1")
    _buy(platform, KEPT, "W-KEEP-1")
    support = platform.urls["support"]

    def relayed() -> bool:
        places = _kafka(platform)
        blind = _needles(ERASED)["email blind index"]
        return all(
            blind in places.get(f"kafka {t}", b"") for t in ("crm.identity.customer", "crm.support.ticket")
        )

    _wait(relayed, "both relays to publish")
    keys_before = _wrapped_keys(platform)
    erased_keys = {k: v for k, v in keys_before.items() if erased_id in k or erased_ticket in k}
    assert set(erased_keys) == {f"cust-{erased_id}", f"ticket-{erased_ticket}"}

    r = httpx.post(
        f"{platform.urls['identity']}/customers/{erased_id}/erase",
        json={"reason": "本人からの削除請求"},
        headers=ADMIN,
        timeout=30,
    )
    assert r.status_code == 200, r.text

    def shredded() -> bool:
        got = httpx.get(f"{support}/v1/tickets/{erased_ticket}", headers=ADMIN, timeout=10).json()
        return bool(got["content_erased"])

    _wait(shredded, "support's eraser to shred the erased person's ticket")

    def ledger_rekeyed() -> bool:
        blind = _needles(ERASED)["email blind index"]
        if platform.kind == "sqlite":
            with sqlite3.connect(platform.var_dir / "engagement" / "ledger.sqlite") as db:
                keys = [r[0] for r in db.execute("SELECT customer_key FROM ingested_orders")]
        else:
            with psycopg.connect(
                host="127.0.0.1",
                port=platform.port,
                user="crm",
                password="crm",
                dbname=platform.databases["engagement"],
            ) as conn:
                keys = [r[0] for r in conn.execute("SELECT customer_key FROM ingested_orders")]
        return len(keys) == 2 and blind.decode() not in keys and erased_id in keys

    _wait(ledger_rekeyed, "engagement's eraser to re-key the erased person's order in the ledger")
    kept_view = httpx.get(f"{support}/v1/tickets/{kept_ticket}", headers=ADMIN, timeout=10).json()
    assert not kept_view["content_erased"] and KEPT["email"].lower() in str(kept_view).lower()
    search = httpx.post(
        f"{support}/v1/tickets/search",
        json={"customer": {"email": ERASED["email"]}},
        headers=ADMIN,
        timeout=10,
    )
    assert search.status_code == 200 and search.json()["total"] == 0  # the index forgot them

    # Scan while every process still runs (their WAL files are there).
    places = {**_sqlite_files(platform), **_kafka(platform)}
    if platform.kind == "postgres":
        places.update(_postgres_rows(platform))
        places["postgres key table files"] = _postgres_key_files(platform)
    assert any(p.startswith("identity") for p in places) and any(p.startswith("support") for p in places)
    assert any(p.startswith("kafka") for p in places)

    # The control: the person not erased is found where their data is (the scans work).
    kept = _where(places, _needles(KEPT))
    assert kept["email blind index"] >= KNOWN_RESIDUE, kept["email blind index"]
    assert "support index" in kept["email blind index"]
    assert "engagement ledger" in kept["email blind index"] or platform.kind == "postgres"
    assert "engagement store" in kept["email blind index"] or platform.kind == "sqlite"

    found = _where(places, _needles(ERASED))
    for name in ("name", "name (no space)", "email", "phone", "email normalised", "phone normalised"):
        assert found[name] == set(), f"the erased person's {name} is in {sorted(found[name])}"
    for name in ("email blind index", "phone blind index"):
        assert found[name] == KNOWN_RESIDUE, (
            f"{name}: {sorted(found[name])}, documented {sorted(KNOWN_RESIDUE)}"
        )

    # The erased person's wrapped data keys: gone from the tables and from the files.
    assert not set(erased_keys) & set(_wrapped_keys(platform))
    for key_id, wrapped in erased_keys.items():
        holding = {p for p, data in places.items() if wrapped in data or wrapped.hex().encode() in data}
        assert holding == set(), f"the wrapped key {key_id} is still in {sorted(holding)}"
    kept_wrapped = keys_before[f"cust-{kept_id}"]
    assert any(kept_wrapped in d or kept_wrapped.hex().encode() in d for d in places.values())
