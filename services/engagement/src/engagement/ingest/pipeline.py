"""From what a source sent to contract events acknowledged by Kafka.

Each event of a request is judged on its own: validated against its contract, allowed
for its source and the key's stores (``sources.py``), its identifiers normalised and
blind-indexed, returns checked against the order ledger (a known order of the same
store, or online; no more returned than bought), resends recognised. The accepted ones are
published together and reported ``accepted`` only once Kafka acknowledged them; then
orders and returns are recorded in the ledger. If the broker does not answer within
``ack_timeout`` the request reports them ``unavailable`` (HTTP 503): the source retries,
and the event ids make the retry harmless.

The common shapes (a store or online order, an interaction) are checked and written by
the native fast path (``engagement_native``, Rust): it gives the very bytes this module's
Python path would, and hands back anything else — every error included — to be judged
here. ``tests/unit/test_native_fastpath.py`` holds the two to the same answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
from engagement_native import FastPath
from pydantic import ValidationError

from crm_contracts.envelope import Event, Identifier, deterministic_event_id
from crm_contracts.events.commerce import (
    InteractionRecorded,
    OnlineOrderCompleted,
    OrderReturned,
    StoreOrderCompleted,
)
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import PLUS_ADDRESSING, BlindIdentifiers, InvalidIdentifier
from crm_platform.kafka import EventProducer, WireEvent
from engagement.adapters.ledger import (
    LEGACY_STORE,
    ONLINE,
    LedgerOrder,
    LedgerReturn,
    OrderLedger,
    namespaces,
    store_namespace,
)
from engagement.ingest.schemas import (
    MAX_EVENT_BYTES,
    EventResult,
    InteractionIn,
    OnlineOrderIn,
    ReturnIn,
    StoreOrderIn,
    incoming,
)
from engagement.ingest.sources import may_send

log = logging.getLogger(__name__)
T = TypeVar("T")

PRODUCER = "engagement.api"
#: From this many events, a request's events go out as record batches of their own.
BATCH_THRESHOLD = 50
#: Up to this many rows a local ledger is used on the event loop when that needs no wait
#: (a lookup, or a write nobody else holds the lock for): it costs less than handing the
#: call to a thread and being woken for the result.
INLINE_LEDGER_ROWS = 16
#: Which identifier names the customer key (the Kafka partition key) when several are seen.
KEY_PRIORITY = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone", "device")

Parsed = StoreOrderIn | OnlineOrderIn | ReturnIn | InteractionIn
#: What the native path's ``kind`` stands for: (topic, event_type, ingestion type).
_NATIVE_KINDS = {
    0: (StoreOrderCompleted.TOPIC, "order.store_completed", "store_order"),
    1: (OnlineOrderCompleted.TOPIC, "order.online_completed", "online_order"),
    2: (InteractionRecorded.TOPIC, "interaction.recorded", "interaction"),
}


class Rejected(Exception):
    def __init__(self, field: str, reason: str, status: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.status = field, reason, status


@dataclass(frozen=True)
class Source:
    """Who is sending: the API key's source name, the stores it may speak for (empty:
    any store) and the event types its source may send (``sources.SourceRules``
    entries; ``None``: any — the import command, run by an operator)."""

    name: str
    stores: frozenset[str] = frozenset()
    allowed: frozenset[str] | None = None


@dataclass(slots=True)
class _Item:
    index: int
    #: The contract event, on the Python path (the native path writes the wire form).
    event: Event | None = None
    #: What goes to Kafka: the native path's from the start, the Python path's once the
    #: ledger check is done (a return takes its order's customer key there).
    wire: WireEvent | None = None
    event_id: str | None = None
    #: An order's ledger key (namespace, order_id) and lines: line_no -> (sku, quantity, amount).
    order_key: tuple[str, str] | None = None
    order_lines: dict[int, tuple[str, int, int]] | None = None
    #: A return's namespace: its order's (``store:<id>``, or ``online``).
    return_namespace: str | None = None
    #: The key is bound to stores (it may not return an order of unknown store).
    bound: bool = False
    #: A store order's or return's instant when its event id was derived here: the id
    #: it had before orders were kept per store is derived from it, to recognise a resend
    #: of a fact recorded then.
    derived_at: datetime | str | None = None
    status: Literal["accepted", "duplicate", "rejected", "unavailable"] = "rejected"
    errors: list[dict[str, str]] = field(default_factory=list)
    http_status: int = 422
    ledger_order: LedgerOrder | None = None
    ledger_return: LedgerReturn | None = None

    @property
    def customer_key(self) -> str:
        if self.wire is not None:
            return self.wire.customer_key
        assert self.event is not None
        return self.event.customer_key

    def reject(self, reason: Rejected) -> None:
        self.status, self.http_status = "rejected", reason.status
        self.errors = [{"field": reason.field, "reason": reason.reason}]

    def result(self) -> EventResult:
        return EventResult(index=self.index, status=self.status, event_id=self.event_id, errors=self.errors)

    def as_json(self) -> dict[str, Any]:
        """:meth:`result` as its JSON object, without building the model (a batch
        answers for up to a thousand events)."""
        return {
            "index": self.index,
            "status": self.status,
            "event_id": self.event_id,
            "errors": self.errors,
        }


class Ingestor:
    def __init__(
        self,
        indexer: BlindIndexer,
        producer: EventProducer,
        ledger: OrderLedger,
        *,
        ack_timeout: float = 5.0,
        native: bool = True,
    ) -> None:
        self.indexer = indexer
        self._blind = BlindIdentifiers(indexer)
        #: The native fast path (``engagement_native``): valid events of the common
        #: shapes are checked and written in Rust; everything else, and every error,
        #: goes the Python way below.
        self._native = (
            FastPath(indexer.key, PRODUCER, MAX_EVENT_BYTES, self._blind.hash, sorted(PLUS_ADDRESSING))
            if native
            else None
        )
        self.producer = producer
        self.ledger = ledger
        self.ack_timeout = ack_timeout

    async def ingest(self, raw_items: Sequence[Any], source: Source) -> list[_Item]:
        return await self.commit(self.prepare(raw_items, source))

    def prepare(self, raw_items: Sequence[Any], source: Source, first_index: int = 0) -> list[_Item]:
        """Each event validated and built (identifiers blind-indexed): CPU only, nothing
        read or written, so it may run while an earlier request's events are in flight."""
        recorded_at = time.time_ns() // 1000  # the native path's recorded_at, in µs
        return [self._build(first_index + i, raw, source, recorded_at) for i, raw in enumerate(raw_items)]

    async def commit(self, items: list[_Item]) -> list[_Item]:
        """Prepared events checked against the ledger, published, acknowledged and
        recorded; each item says how it went."""
        await self._check_against_ledger([i for i in items if i.status == "accepted"])
        await self._publish([i for i in items if i.status == "accepted"])
        return items

    async def _on_ledger(self, rows: int, call: Callable[..., T], *args: Any) -> T:
        """A lookup of a few rows in a local ledger that nobody is using runs on the loop
        (a thread hop costs more than the query, and WAL readers never wait for a
        writer); anything else on a thread: many rows, a database across the network,
        a ledger busy with another request's batch."""
        ledger = self.ledger
        if ledger.in_process and rows <= INLINE_LEDGER_ROWS and not ledger.busy():
            return call(*args)
        return await asyncio.to_thread(call, *args)

    # -- one event ----------------------------------------------------------------------

    def _build(self, index: int, raw: Any, source: Source, recorded_at: int) -> _Item:
        item = _Item(index)
        try:
            # The native path measures the event too, and leaves anything too large here.
            fast = self._native.prepare(raw, source.name, recorded_at) if self._native is not None else None
            if fast is not None:
                kind, event_id, customer_key, value, order_id, store_id, lines = fast
                topic, event_type, ingest_type = _NATIVE_KINDS[kind]
                # Valid (the native path took it): the same checks as below, on its values.
                payload = raw["payload"]
                if kind == 0:
                    _authorise(source, ingest_type, "store", store_id)
                elif kind == 1:
                    _authorise(source, ingest_type, payload.get("channel", "online"), None)
                else:
                    _authorise(source, ingest_type, payload["kind"], None)
                item.wire = WireEvent(topic, event_type, 1, event_id, customer_key, value)
                item.event_id, item.bound = event_id, bool(source.stores)
                if kind == 0 and order_id is not None and store_id is not None:
                    item.order_key, item.order_lines = (store_namespace(store_id), order_id), lines
                    if raw.get("event_id") is None:
                        item.derived_at = raw["occurred_at"]
                elif kind == 1 and order_id is not None:
                    item.order_key, item.order_lines = (ONLINE, order_id), lines
                item.status, item.http_status = "accepted", 202
                return item
            if _size(raw) > MAX_EVENT_BYTES:
                raise Rejected("", f"event larger than {MAX_EVENT_BYTES} bytes", 413)
            try:
                parsed = incoming.validate_python(raw)
            except ValidationError as exc:
                item.errors = [{"field": _field(err), "reason": err["msg"]} for err in exc.errors()]
                return item
            _authorise(source, *_what(parsed))
            event = item.event = self._event(parsed, source)
            item.event_id = str(event.event_id)
            item.bound = bool(source.stores)
            if isinstance(event, StoreOrderCompleted):
                item.order_key = (store_namespace(event.payload.store_id), event.payload.order_id)
            elif isinstance(event, OnlineOrderCompleted):
                item.order_key = (ONLINE, event.payload.order_id)
            elif isinstance(event, OrderReturned):
                item.return_namespace = _return_namespace(event.payload.channel, event.payload.store_id)
            if isinstance(event, StoreOrderCompleted | OnlineOrderCompleted):
                item.order_lines = {
                    line.line_no: (line.sku, line.quantity, line.amount) for line in event.payload.lines
                }
            in_store = item.return_namespace not in (None, ONLINE) or (
                item.order_key is not None and item.order_key[0] != ONLINE
            )
            if in_store and parsed.event_id is None:
                item.derived_at = parsed.occurred_at
            item.status, item.http_status = "accepted", 202
        except Rejected as reason:
            item.reject(reason)
        return item

    def _identifiers(self, parsed: Parsed) -> list[Identifier]:
        out = []
        for kind in KEY_PRIORITY:
            value = getattr(parsed.identifiers, kind)
            if value is None:
                continue
            try:
                out.append(self._blind(kind, value))
            except InvalidIdentifier as exc:
                raise Rejected(f"identifiers.{kind}", exc.reason) from None
        return out

    def _event(self, parsed: Parsed, source: Source) -> Event:
        identifiers = self._identifiers(parsed)
        at = parsed.occurred_at
        common: dict[str, Any] = {
            "occurred_at": at,
            "producer": PRODUCER,
            "identifiers": tuple(identifiers),
        }
        if isinstance(parsed, StoreOrderIn):
            payload = parsed.payload
            key = ("store", payload.order_id)
            event_id = parsed.event_id or deterministic_event_id(
                at, "store", _id_part(payload.store_id), payload.order_id
            )
            return StoreOrderCompleted(
                **common, event_id=event_id, customer_key=_customer_key(identifiers, key), payload=payload
            )
        if isinstance(parsed, OnlineOrderIn):
            payload_o = parsed.payload
            key = ("online", payload_o.order_id)
            event_id = parsed.event_id or deterministic_event_id(at, *key)
            return OnlineOrderCompleted(
                **common, event_id=event_id, customer_key=_customer_key(identifiers, key), payload=payload_o
            )
        if isinstance(parsed, ReturnIn):
            payload_r = parsed.payload
            if payload_r.channel == "store":
                if payload_r.store_id is None:
                    raise Rejected("payload.store_id", "a store return names the store of its order")
                rkey: tuple[str, ...] = ("store", _id_part(payload_r.store_id), "return", payload_r.return_id)
            else:
                rkey = (ONLINE, "return", payload_r.return_id)
            event_id = parsed.event_id or deterministic_event_id(at, *rkey)
            # customer_key is set from the original order in _check_against_ledger, so the
            # return lands on the order's partition (same customer, in order).
            return OrderReturned(
                **common, event_id=event_id, customer_key=_customer_key(identifiers, rkey), payload=payload_r
            )
        payload_i = parsed.payload
        anonymous = ("session", payload_i.session_id) if payload_i.session_id else ("event",)
        # Without an event_id from the source, an interaction is known by what it says:
        # the same view of the same product in the same session at the same millisecond,
        # resent after a timeout, is the same fact (the same id, which every consumer
        # de-duplicates), not a second view.
        event_id = parsed.event_id or deterministic_event_id(
            at,
            "interaction",
            source.name,
            *(i.hash for i in identifiers),
            payload_i.kind.value,
            payload_i.channel,
            payload_i.session_id,
            payload_i.sku,
            payload_i.category,
            payload_i.quantity,
            payload_i.unit_price,
            payload_i.query,
            payload_i.page,
            payload_i.app_version,
        )
        if anonymous == ("event",):
            anonymous = ("event", str(event_id))
        return InteractionRecorded(
            **common, event_id=event_id, customer_key=_customer_key(identifiers, anonymous), payload=payload_i
        )

    # -- against what was ingested before ----------------------------------------------------

    async def _check_against_ledger(self, items: list[_Item]) -> None:
        order_keys: list[tuple[str, str]] = []
        return_keys: list[tuple[str, str]] = []
        for item in items:
            event = item.event
            if item.order_key is not None:
                namespace, order_id = item.order_key
                order_keys += [(n, order_id) for n in namespaces(namespace)]
            elif isinstance(event, OrderReturned):
                assert item.return_namespace is not None
                for n in namespaces(item.return_namespace):
                    order_keys.append((n, event.payload.original_order_id))
                    return_keys.append((n, event.payload.return_id))
        known_orders = (
            await self._on_ledger(len(order_keys), self.ledger.orders, order_keys) if order_keys else {}
        )
        known_returns = (
            await self._on_ledger(len(return_keys), self.ledger.returns, return_keys) if return_keys else {}
        )
        for item in items:
            try:
                self._check_one(item, known_orders, known_returns)
            except Rejected as reason:
                item.reject(reason)

    def _check_one(
        self,
        item: _Item,
        orders: dict[tuple[str, str], LedgerOrder],
        returns: dict[tuple[str, str], str],
    ) -> None:
        event = item.event
        event_id = item.event_id
        assert event_id is not None
        if item.order_key is not None:
            key = item.order_key
            known = _first(orders, namespaces(key[0]), key[1])
            if known is not None:
                if known.event_id != event_id and not (
                    known.namespace == LEGACY_STORE and known.event_id == _legacy_id(item, "store", key[1])
                ):
                    raise Rejected(
                        "payload.order_id", f"order already ingested as event {known.event_id}", 409
                    )
                item.status, item.event_id = "duplicate", known.event_id
                return
            assert item.order_lines is not None
            order = LedgerOrder(key[0], key[1], event_id, item.customer_key, item.order_lines)
            orders[key] = order  # a return later in the same request may refer to it
            item.ledger_order = order
        elif isinstance(event, OrderReturned):
            payload = event.payload
            namespace = item.return_namespace
            assert namespace is not None
            seen = _first(returns, namespaces(namespace), payload.return_id)
            if seen is not None:
                if seen != event_id and seen != _legacy_id(item, "store", "return", payload.return_id):
                    raise Rejected("payload.return_id", f"return already ingested as event {seen}", 409)
                item.status, item.event_id = "duplicate", seen
                return
            original = orders.get((namespace, payload.original_order_id))
            if original is None and namespace != ONLINE:
                original = orders.get((LEGACY_STORE, payload.original_order_id))
                if original is not None and item.bound:
                    raise Rejected(
                        "payload.original_order_id",
                        f"order {payload.original_order_id!r} was ingested before orders were kept per "
                        "store, so its store is unknown: only a key bound to no store may return it",
                        403,
                    )
            if original is None:
                where = "online" if namespace == ONLINE else f"of store {payload.store_id!r}"
                raise Rejected(
                    "payload.original_order_id",
                    f"no order {payload.original_order_id!r} {where} was ingested",
                )
            taking: dict[int, int] = {}
            for n, line in enumerate(payload.lines):
                bought = original.lines.get(line.line_no)
                if bought is None:
                    raise Rejected(f"payload.lines.{n}.line_no", f"the order has no line {line.line_no}")
                if bought[0] != line.sku:
                    raise Rejected(f"payload.lines.{n}.sku", f"line {line.line_no} is {bought[0]!r}")
                left = bought[1] - original.returned.get(line.line_no, 0) - taking.get(line.line_no, 0)
                if line.quantity > left:
                    raise Rejected(
                        f"payload.lines.{n}.quantity", f"only {left} of line {line.line_no} left to return"
                    )
                taking[line.line_no] = taking.get(line.line_no, 0) + line.quantity
            for line_no, quantity in taking.items():
                original.returned[line_no] = original.returned.get(line_no, 0) + quantity
            returns[(original.namespace, payload.return_id)] = event_id
            # The return follows its order: same partition key, so same customer order.
            item.event = event.model_copy(update={"customer_key": original.customer_key})
            item.ledger_return = LedgerReturn(
                original.namespace, payload.original_order_id, payload.return_id, event_id, taking
            )

    # -- to Kafka, then the ledger --------------------------------------------------------

    async def _publish(self, items: list[_Item]) -> None:
        if not items:
            return
        futures: list[asyncio.Future[Any] | None] = [None] * len(items)
        wires = []
        for item in items:
            if item.wire is None:
                assert item.event is not None
                item.wire = WireEvent.of(item.event)
            wires.append(item.wire)
        try:
            async with asyncio.timeout(self.ack_timeout):
                if len(wires) >= BATCH_THRESHOLD:
                    futures = list(await self.producer.enqueue_many_wire(wires))
                else:  # a few events join the producer's shared batches (many requests, one batch)
                    futures = [await self.producer.enqueue_wire(wire) for wire in wires]
                await asyncio.gather(*{f for f in futures if f is not None})
        except Exception as exc:  # broker unreachable, timeout, or refused
            log.warning("broker did not acknowledge %d events: %r", len(items), exc)
        acked = []
        for item, future in zip(items, futures, strict=True):
            if future is not None and future.done() and not future.cancelled() and future.exception() is None:
                acked.append(item)
            else:
                if future is not None and not future.done():
                    future.cancel()
                item.status, item.http_status = "unavailable", 503
                item.errors = [{"field": "", "reason": "the event broker did not acknowledge in time; retry"}]
        orders = [i.ledger_order for i in acked if i.ledger_order is not None]
        returns = [i.ledger_return for i in acked if i.ledger_return is not None]
        if not orders and not returns:
            return  # interactions: nothing for the ledger
        try:
            rows = len(orders) + len(returns)
            if not (
                rows <= INLINE_LEDGER_ROWS
                and self.ledger.in_process
                and self.ledger.try_record(orders, returns)
            ):
                await asyncio.to_thread(self.ledger.record, orders, returns)
        except Exception:
            # On the broker but not recorded: the source must retry (same event ids, so
            # consumers see one fact), and the retry records it.
            log.exception("order ledger write failed after the broker's ack")
            for item in acked:
                if item.ledger_order is not None or item.ledger_return is not None:
                    item.status, item.http_status = "unavailable", 503
                    item.errors = [{"field": "", "reason": "the order ledger is unavailable; retry"}]


_TYPES = ("store_order", "online_order", "return", "interaction")


def _field(error: Any) -> str:
    """The field an error names, without the union tag pydantic puts first."""
    loc = list(error["loc"])
    if loc and loc[0] in _TYPES:
        loc = loc[1:]
    if not loc and str(error["type"]).startswith("union_tag"):
        return "type"
    return ".".join(str(p) for p in loc)


def _size(raw: Any) -> int:
    """An event's size as compact JSON. orjson refuses integers past 64 bits (a CSV cell
    of 25 digits) and nesting past 255 levels: those are measured by the standard library
    (and pydantic names the field); past what it can walk, the event is refused."""
    try:
        return len(orjson.dumps(raw))
    except TypeError:
        pass
    try:
        return len(json.dumps(raw, ensure_ascii=False, separators=(",", ":"), default=str).encode())
    except RecursionError:
        raise Rejected("", "event nested too deeply") from None


def _what(parsed: Parsed) -> tuple[str, str, str | None]:
    """(ingestion type, qualifier, store_id) of a valid event, for :func:`_authorise`."""
    if isinstance(parsed, StoreOrderIn):
        return "store_order", "store", parsed.payload.store_id
    if isinstance(parsed, OnlineOrderIn):
        return "online_order", parsed.payload.channel, None
    if isinstance(parsed, ReturnIn):
        return "return", parsed.payload.channel, parsed.payload.store_id
    return "interaction", parsed.payload.kind.value, None


def _authorise(source: Source, kind: str, qualifier: str, store_id: str | None) -> None:
    """Refuse (403) what the key's source may not send, and, for a key bound to stores,
    an event naming none of them. The same on the native and the Python path."""
    if not may_send(source.allowed, kind, qualifier):
        allowed = source.allowed or frozenset()
        narrowed = any(e.startswith(kind + ":") for e in allowed)
        what = "kind" if kind == "interaction" else "channel"
        raise Rejected(
            f"payload.{what}" if narrowed else "type",
            f"source {source.name!r} may not send {kind} events ({what} {qualifier}); "
            f"it may send: {', '.join(sorted(allowed)) or 'nothing'}",
            403,
        )
    if source.stores:
        if store_id is None:
            raise Rejected(
                "payload.store_id",
                f"this API key may send only for store {', '.join(sorted(source.stores))}: "
                f"a {kind} naming no store is refused",
                403,
            )
        if store_id not in source.stores:
            raise Rejected("payload.store_id", f"this API key may not send for store {store_id!r}", 403)


def _return_namespace(channel: str, store_id: str | None) -> str:
    """The namespace of a return's order: its store's (a store return names it), or online."""
    if channel != "store":
        return ONLINE
    assert store_id is not None  # refused before
    return store_namespace(store_id)


def _id_part(store_id: str) -> str:
    """A store id as a part of a derived event id, length first: parts are joined with
    ``|``, which a store id may contain, and no two (store, order) pairs may join alike."""
    return f"{len(store_id)}:{store_id}"


def _first(found: dict[tuple[str, str], T], spaces: tuple[str, ...], key: str) -> T | None:
    for space in spaces:
        hit = found.get((space, key))
        if hit is not None:
            return hit
    return None


def _legacy_id(item: _Item, *parts: str) -> str | None:
    """The event id a store order or return had when the ledger kept one namespace for
    all stores (``None``: its id was given by the source, not derived)."""
    at = item.derived_at
    if at is None:
        return None
    when = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    return str(deterministic_event_id(when, *parts))


def _customer_key(identifiers: list[Identifier], fallback: tuple[str, ...]) -> str:
    """The strongest identifier's blind index (one person's facts share a partition), or
    a stable key of the fact itself when nobody was identified (an anonymous sale)."""
    if identifiers:
        return identifiers[0].hash
    return "anonymous:" + ":".join(fallback)[:100]
