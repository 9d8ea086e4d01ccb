"""The native fast path against the Python path, event by event.

The native path (``engagement_native``, Rust) may only *accept*: for anything it does
not fully understand it answers ``None`` and the Python path (pydantic and
``crm_platform.identifiers``) decides. So whatever it accepts must be accepted by the
Python path too, with the very same bytes on Kafka, event id, partition key and ledger
lines. This test builds a few thousand events — valid ones of many shapes, and each
mutated at random (a field dropped, nulled, retyped, stretched, a timestamp in another
form, an identifier in full width or with a phone number) — and compares both paths on
every one. It also checks that the native path does take the common shapes (or it
would be correct and useless).
"""

from __future__ import annotations

import copy
import random
import re
import uuid
from typing import Any

import pytest

from crm_platform.crypto import BlindIndexer
from engagement.ingest.pipeline import Ingestor, Source
from engagement.ingest.sources import SourceRules

KEY = bytes(range(32))
RECORDED = re.compile(rb'"recorded_at":"[^"]*"')
STRANGE = [
    "",
    "a",
    "x" * 64,
    "x" * 65,
    'q"uote\\back',
    "tab\tnew\nline\x01",
    "東京都",
    "渋谷区神宮前",
    "emoji 🎁",
    "\u2028",
    " pad ",
]
INSTANTS = [
    "2026-11-01T09:00:00+09:00",
    "2026-11-01T00:00:00Z",
    "2026-11-01T00:00:00.5Z",
    "2026-11-01T00:00:00.123456-05:30",
    "2024-02-29T23:59:59.999999+00:00",
    "1970-01-01T00:00:00Z",
    "2026-12-31T23:30:00-14:00",
]
ODD_INSTANTS = [
    "2026-11-01 09:00:00+09:00",
    "2026-11-01T09:00:00",
    "2026-11-01T09:00:00+0900",
    "2026-11-01T09:00:00.1234567Z",
    "2026-11-01T09:00:00z",
    "2025-02-29T00:00:00Z",
    "2026-11-01T24:00:00Z",
    "2026-11-01T09:00:60Z",
    "1969-12-31T23:59:59Z",
    "2026-11-01",
    1_790_000_000,
    "2026-13-01T00:00:00Z",
]


def _identifiers(rng: random.Random) -> dict[str, Any]:
    choices: list[dict[str, Any]] = [
        {"member_no": rng.choice(["M0001234", "m-0001-234", "0012-3456", "A.B:C_1"])},
        {"pos_card": "PC-" + str(rng.randrange(10**6))},
        {
            "email": rng.choice(
                ["Taro.Yamada+shop@Gmail.com", "hanako@example.co.jp", "x@googlemail.com", "a.b@outlook.jp"]
            )
        },
        {"ec_account": rng.choice(["ec-12", "EC:abc/def", "user@shop"])},
        {"line_id": "U" + "f" * 20},
        {"device": rng.choice(["dev-1", "ios:ABCDEF", "android_9"])},
        {"email": "m1@example.jp", "ec_account": "ec-1", "device": "d-1"},
        {"member_no": "M1", "email": None},
        {},
    ]
    return copy.deepcopy(rng.choice(choices))


def _line(rng: random.Random, n: int) -> dict[str, Any]:
    line: dict[str, Any] = {
        "line_no": n,
        "sku": rng.choice(["SKU-1", "sku/ä", "S" * 64]),
        "category": rng.choice(["tops", "食品", "goods"]),
        "quantity": rng.randint(1, 5),
        "unit_price": rng.choice([0, 550, 1990, 12900]),
    }
    if rng.random() < 0.4:
        line["discount"] = rng.choice([0, 100])
    if rng.random() < 0.3:
        line["tax"] = 90
    if rng.random() < 0.1:
        line["amount"] = 999  # not a field: ignored
    return line


def _order(rng: random.Random, n: int, store: bool) -> dict[str, Any]:
    lines = [_line(rng, i + 1) for i in range(rng.randint(1, 3))]
    shipping = 0 if store else rng.choice([0, 550])
    discount = rng.choice([0, 0, 100])
    total = sum(x["quantity"] * x["unit_price"] - x.get("discount", 0) for x in lines) + shipping - discount
    payload: dict[str, Any] = {"order_id": f"O-{n}", "lines": lines, "total": total}
    if shipping or rng.random() < 0.3:
        payload["shipping"] = shipping
    if discount or rng.random() < 0.3:
        payload["order_discount"] = discount
    for name, value in [
        ("tax", 411),
        ("payment_method", "credit_card"),
        ("points_used", 10),
        ("currency", "JPY"),
    ]:
        if rng.random() < 0.5:
            payload[name] = value
    if store:
        payload["store_id"] = f"S{n % 7:03d}"
        for name in ("register_id", "receipt_no", "staff_id"):
            if rng.random() < 0.5:
                payload[name] = rng.choice([None, "R1", "00012"])
    else:
        for name, value in [
            ("channel", rng.choice(["online", "app"])),
            ("shop_id", "web-jp"),
            ("shipping_prefecture", "東京都"),
            ("coupon_code", None),
        ]:
            if rng.random() < 0.5:
                payload[name] = value
    if rng.random() < 0.1:
        payload["note"] = "unknown payload fields are ignored"
    return payload


def _interaction(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(
        ["product_viewed", "added_to_cart", "searched", "app_opened", "page_viewed", "checkout_started"]
    )
    payload: dict[str, Any] = {"kind": kind}
    if kind in ("product_viewed", "added_to_cart") or rng.random() < 0.3:
        payload["sku"] = "SKU-9"
    if kind == "searched" or rng.random() < 0.2:
        payload["query"] = rng.choice(["ワンピース", "coat"])
    for name, value in [
        ("channel", "app"),
        ("session_id", rng.choice(["s1", "", "s" * 128])),
        ("category", "tops"),
        ("quantity", 2),
        ("unit_price", 1990),
        ("page", "/p/1"),
        ("app_version", "5.1.0"),
    ]:
        if rng.random() < 0.3:
            payload[name] = value
    return payload


def _event(rng: random.Random, n: int) -> dict[str, Any]:
    kind = rng.choice(["store_order", "online_order", "interaction"])
    payload = _interaction(rng) if kind == "interaction" else _order(rng, n, store=kind == "store_order")
    event: dict[str, Any] = {"type": kind, "occurred_at": rng.choice(INSTANTS), "payload": payload}
    identifiers = _identifiers(rng)
    if identifiers or rng.random() < 0.5:
        event["identifiers"] = identifiers
    if rng.random() < 0.3:
        event["event_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
    return event


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(event)
    path = rng.choice(_paths(event))
    parent = event
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    what = rng.randrange(12)
    if what == 0 and isinstance(parent, dict):
        del parent[last]
    elif what == 1:
        parent[last] = None
    elif what == 2:
        value = parent[last]
        parent[last] = str(value) if isinstance(value, int) else rng.choice([1, 1.0, True, [], {}])
    elif what == 3:
        parent[last] = rng.choice([-1, 0, 10**5 + 1, 10**8 + 1, 2**63, 2**70, 10_001])
    elif what == 4:
        parent[last] = rng.choice(STRANGE)
    elif what == 5 and isinstance(parent, dict):
        parent["unexpected"] = 1
    elif what == 6:
        event["occurred_at"] = rng.choice(ODD_INSTANTS)
    elif what == 7:
        event["identifiers"] = rng.choice(
            [
                {"phone": "03-1234-5678"},
                {"email": "ＴＡＲＯ＠ＥＸＡＭＰＬＥ．ＪＰ"},
                {"member_no": "Ｍ０００１"},
                {"email": "not-an-email"},
                {"email": "a@b"},
                {"email": "+tag@gmail.com"},
                {"email": "a@-bad-.jp"},
                {"member_no": "M 1"},
                {"member_no": "-"},
                {"member_no": "M" * 65},
                {"device": "d" * 129},
                {"passport": "X"},
                {"email": "x" * 65 + "@example.jp"},
                "not an object",
            ]
        )
    elif what == 8:
        event["event_id"] = rng.choice(
            [
                str(uuid.uuid4()).upper(),
                uuid.uuid4().hex,
                "{" + str(uuid.uuid4()) + "}",
                "not-a-uuid",
                12,
            ]
        )
    elif what == 9:
        event["type"] = rng.choice(["return", "refund", None])
    elif what == 10 and isinstance(parent, dict) and "total" in parent:
        parent["total"] += rng.choice([-1, 1])
    elif what == 11 and isinstance(parent, dict) and "lines" in parent:
        parent["lines"] = rng.choice([[], "lines", [parent["lines"][0]] * 1001])
    return event


def _both(raw: dict[str, Any], source: Source) -> tuple[Any, Any]:
    native = Ingestor(BlindIndexer(KEY), None, None)  # type: ignore[arg-type]
    python = Ingestor(BlindIndexer(KEY), None, None, native=False)  # type: ignore[arg-type]
    [fast] = native.prepare([copy.deepcopy(raw)], source)
    [slow] = python.prepare([copy.deepcopy(raw)], source)
    return fast, slow


def _same(fast: Any, slow: Any, raw: dict[str, Any]) -> None:
    assert slow.status == fast.status, (raw, slow.errors)
    if fast.status != "accepted":
        assert (fast.errors, fast.http_status) == (slow.errors, slow.http_status)
        return
    from crm_platform.kafka import WireEvent

    slow_wire = WireEvent.of(slow.event)
    fast_wire = fast.wire if fast.wire is not None else WireEvent.of(fast.event)
    assert RECORDED.sub(b"", fast_wire.value) == RECORDED.sub(b"", slow_wire.value), raw
    assert (fast_wire.topic, fast_wire.event_type, fast_wire.event_id, fast_wire.customer_key) == (
        slow_wire.topic,
        slow_wire.event_type,
        slow_wire.event_id,
        slow_wire.customer_key,
    )
    assert (fast.event_id, fast.order_key, fast.order_lines) == (
        slow.event_id,
        slow.order_key,
        slow.order_lines,
    )


def test_the_native_path_accepts_only_what_the_python_path_accepts_and_writes_the_same_bytes() -> None:
    rng = random.Random(20261123)
    source = Source("pos")
    taken_natively = valid = 0
    for n in range(1500):
        event = _event(rng, n)
        fast, slow = _both(event, source)
        _same(fast, slow, event)
        valid += slow.status == "accepted"
        taken_natively += fast.wire is not None and fast.event is None
        for _ in range(3):
            mutated = _mutate(rng, event)
            fast, slow = _both(mutated, source)
            _same(fast, slow, mutated)
            taken_natively += fast.wire is not None and fast.event is None
    # Every valid generated event is of a shape the native path knows.
    assert valid > 1000
    assert taken_natively > valid


def test_both_paths_refuse_alike_what_a_source_or_a_store_bound_key_may_not_send() -> None:
    """Keys as the API builds them (``SourceRules``): the POS bound to two stores, the web
    shop, the app, and a source whose allow-list narrows by channel and kind."""
    rules = SourceRules.of({"kiosk": ["online_order:app", "interaction:app_opened", "interaction:searched"]})
    sources = [
        Source("pos", frozenset({"S001", "S003"}), rules.for_source("pos")),
        Source("webshop", frozenset(), rules.for_source("webshop")),
        Source("app", frozenset(), rules.for_source("app")),
        Source("kiosk", frozenset(), rules.for_source("kiosk")),
        Source("kiosk", frozenset({"S002"}), rules.for_source("kiosk")),
        Source("unknown", frozenset(), rules.for_source("unknown")),
    ]
    rng = random.Random(20261207)
    outcomes: dict[tuple[str, str], set[str]] = {}
    for n in range(600):
        event = _event(rng, n)
        for raw in (event, _mutate(rng, event)):
            for source in sources:
                fast, slow = _both(raw, source)
                _same(fast, slow, raw)
                fields = ",".join(e["field"] for e in fast.errors) if fast.http_status == 403 else ""
                outcomes.setdefault(
                    (source.name + ":" + ",".join(sorted(source.stores)), fast.status), set()
                ).add(fields)
    # Each source had events accepted and refused for its type or its stores (403).
    assert outcomes[("pos:S001,S003", "accepted")] and outcomes[("webshop:", "accepted")]
    assert {"type", "payload.store_id"} <= outcomes[("pos:S001,S003", "rejected")]
    assert "type" in outcomes[("app:", "rejected")] and ("app:", "accepted") in outcomes
    assert {"type", "payload.channel", "payload.kind"} <= outcomes[("kiosk:", "rejected")]
    assert "payload.store_id" in outcomes[("kiosk:S002", "rejected")]
    assert ("unknown:", "accepted") not in outcomes


def test_a_store_order_s_derived_id_is_its_store_s() -> None:
    """The same receipt number at two stores, at the same instant: two facts, two ids
    (a store id holding ``|`` does not make two pairs alike)."""
    ids = set()
    for store, order in (("S001", "R1-1"), ("S002", "R1-1"), ("S|1", "R"), ("S", "1|R")):
        raw = {
            "type": "store_order",
            "occurred_at": "2026-11-01T10:00:00+09:00",
            "payload": {
                "order_id": order,
                "store_id": store,
                "total": 100,
                "lines": [{"line_no": 1, "sku": "A", "category": "c", "quantity": 1, "unit_price": 100}],
            },
        }
        fast, slow = _both(raw, Source("pos"))
        _same(fast, slow, raw)
        assert fast.event is None and fast.order_key == (f"store:{store}", order)
        ids.add(fast.event_id)
    assert len(ids) == 4


@pytest.mark.parametrize(
    "raw",
    [
        {
            "type": "store_order",
            "occurred_at": "2026-11-01T10:00:00+09:00",
            "identifiers": {"member_no": "M1"},
            "payload": {
                "order_id": "O1",
                "store_id": "S999",
                "total": 100,
                "lines": [{"line_no": 1, "sku": "A", "category": "c", "quantity": 1, "unit_price": 100}],
            },
        },
    ],
)
def test_a_store_the_key_may_not_speak_for_is_refused_on_either_path(raw: dict[str, Any]) -> None:
    fast, slow = _both(raw, Source("pos", frozenset({"S001"})))
    assert fast.status == slow.status == "rejected"
    assert fast.http_status == 403
    assert fast.errors == [
        {"field": "payload.store_id", "reason": "this API key may not send for store 'S999'"}
    ]
    fast, _ = _both(raw, Source("pos", frozenset({"S999"})))
    assert fast.status == "accepted" and fast.event is None  # the native path, allowed


def test_the_size_bound_is_the_same_on_both_paths_to_the_byte() -> None:
    """The native path measures the event as JSON itself (orjson's escaping: control
    characters, quotes, backslashes, non-ASCII kept as UTF-8)."""
    import orjson

    from engagement.ingest.schemas import MAX_EVENT_BYTES

    raw: dict[str, Any] = {
        "type": "interaction",
        "occurred_at": "2026-11-01T10:00:00+09:00",
        "identifiers": {"device": "d-1"},
        "payload": {"kind": "app_opened", "note": ""},
    }
    filler = 'a"\\\n\x01\x1f\x7f東🎁/'
    while len(orjson.dumps(raw)) < MAX_EVENT_BYTES - 100:
        raw["payload"]["note"] += filler
    raw["payload"]["note"] += "a" * (MAX_EVENT_BYTES - len(orjson.dumps(raw)))
    assert len(orjson.dumps(raw)) == MAX_EVENT_BYTES
    fast, slow = _both(raw, Source("web"))
    assert fast.status == slow.status == "accepted"
    assert fast.event is None  # measured natively, and taken
    raw["payload"]["note"] += "\x02"  # six bytes more as JSON
    fast, slow = _both(raw, Source("web"))
    assert fast.status == slow.status == "rejected"
    assert fast.http_status == slow.http_status == 413


def test_identifiers_the_native_code_does_not_normalise_are_normalised_by_python_for_it() -> None:
    """A phone number (phonenumbers) or a full-width e-mail (NFKC) keeps the event on the
    native path: the same Python normalisation gives it its blind index."""
    raw = {
        "type": "online_order",
        "occurred_at": "2026-11-01T10:00:00+09:00",
        "identifiers": {"phone": "090-1234-5678", "email": "ＴＡＲＯ＠ＥＸＡＭＰＬＥ．ＪＰ"},
        "payload": {
            "order_id": "W1",
            "total": 100,
            "lines": [{"line_no": 1, "sku": "A", "category": "c", "quantity": 1, "unit_price": 100}],
        },
    }
    fast, slow = _both(raw, Source("web"))
    _same(fast, slow, raw)
    assert fast.event is None and fast.wire is not None
    raw["identifiers"]["phone"] = "12"  # not a phone number: the Python path refuses it
    fast, slow = _both(raw, Source("web"))
    assert fast.status == slow.status == "rejected"
    assert fast.errors == [{"field": "identifiers.phone", "reason": slow.errors[0]["reason"]}]


def _interaction_at(occurred_at: str, **payload: Any) -> dict[str, Any]:
    return {"type": "interaction", "occurred_at": occurred_at, "payload": {"kind": "app_opened", **payload}}


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2255-09-02T15:17:38.065999Z",
        "2300-01-01T00:00:00.999999Z",
        "5942-08-23T22:33:35.064999Z",
        "2200-01-01T00:00:00.999999Z",
    ],
)
def test_far_future_instants_get_the_python_path_s_event_id(occurred_at: str) -> None:
    """Past 2^53 microseconds a double cannot hold the instant exactly, and the event id's
    millisecond would depend on rounding: the native path leaves those to Python."""
    raw = _interaction_at(occurred_at)
    fast, slow = _both(raw, Source("web"))
    _same(fast, slow, raw)


def test_an_instant_out_of_range_in_utc_is_refused_naming_the_field() -> None:
    fast, slow = _both(_interaction_at("9999-12-31T23:00:00-01:00"), Source("web"))
    assert fast.status == slow.status == "rejected"
    assert fast.errors == [
        {"field": "occurred_at", "reason": "Value error, timestamp out of range once in UTC"}
    ]


def test_deep_nesting_is_measured_alike_and_never_breaks_the_request() -> None:
    import orjson

    from engagement.ingest.schemas import MAX_EVENT_BYTES

    nested: Any = 0
    for _ in range(300):  # past orjson's 255 levels: Python measures it with json, compactly
        nested = [nested]
    raw = _interaction_at("2026-11-01T10:00:00+09:00", x=nested, note="")
    size = len(orjson.dumps(_interaction_at("2026-11-01T10:00:00+09:00", note=""))) + len(',"x":') + 601
    raw["payload"]["note"] = "a" * (MAX_EVENT_BYTES - size)
    fast, slow = _both(raw, Source("web"))
    assert fast.status == slow.status == "accepted"  # exactly at the bound
    raw["payload"]["note"] += "a"
    fast, slow = _both(raw, Source("web"))
    assert fast.http_status == slow.http_status == 413
    for _ in range(1020 - 300):  # orjson parses up to 1024 levels: more than json can walk
        nested = [nested]
    raw = _interaction_at("2026-11-01T10:00:00+09:00", x=nested)
    for native in (True, False):  # (no deep copies here: copy.deepcopy cannot walk it either)
        [item] = Ingestor(BlindIndexer(KEY), None, None, native=native).prepare([raw], Source("web"))  # type: ignore[arg-type]
        assert item.errors == [{"field": "", "reason": "event nested too deeply"}]
