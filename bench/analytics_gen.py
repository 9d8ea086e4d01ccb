"""Synthetic retail data for the analytics benchmark: contract events as JSON bytes.

Deterministic for a seed. ``events`` commerce events over two years in Japan
(``START``..``END``, JST) for ``customers`` customers:

* ~30 % purchases: store POS orders (55 %, an eighth of them anonymous), online-shop
  (30 %) and app orders (15 %), 1–4 lines over a dozen categories, with seasonality
  (December, the January and July sales, weekends in stores, the hour of the day in
  JST) and a slowly growing business;
* ~3 % returns and cancellations of earlier purchases;
* the rest interactions (product_viewed, added_to_cart, searched, app_opened), a tenth
  of them from devices nobody has identified.

Customers have 1–3 identifiers (member_no, email, device); each event carries the one
its channel observes, as ``customer_key``, the way the ingestion API publishes them.
They join over the two years (a third are there from the start) and are active with a
log-normal intensity. After the commerce events: one ``customer.profile_snapshot`` per
customer mapping its identifiers to its customer_id, and ``customers // 300`` merges
(a ``customer.merged`` and the merged customer's snapshot pointing at its survivor).

Building ten million pydantic models would take the better part of an hour, so the
generator fills dict templates with the exact key order of ``model_dump(mode="json")``
and serialises them with orjson; :func:`verify_sample` proves a sample decodes with
``crm_contracts.registry.decode`` and re-encodes to the very same JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
JST = timedelta(hours=9)
#: The data's two years, [START, END): 2024-10-01 .. 2026-10-01 in Tokyo.
START = datetime(2024, 10, 1, tzinfo=UTC) - JST
END = datetime(2026, 10, 1, tzinfo=UTC) - JST
HOURS = int((END - START).total_seconds() // 3600)

ORDER_TOPIC = "crm.commerce.order"
INTERACTION_TOPIC = "crm.commerce.interaction"
PROFILE_TOPIC = "crm.identity.profile"
CUSTOMER_TOPIC = "crm.identity.customer"

# event kinds in the stream
STORE, ONLINE, APP, RETURN, INTERACTION = range(5)

CATEGORIES = (
    "tops",
    "bottoms",
    "outer",
    "dresses",
    "shoes",
    "bags",
    "accessories",
    "kids",
    "innerwear",
    "beauty",
    "home",
    "goods",
)
CATEGORY_WEIGHTS = np.array([18, 14, 8, 6, 7, 5, 8, 7, 9, 6, 5, 7], dtype=float)
#: typical unit prices (yen, tax included) of each category
PRICES = {
    "tops": (990, 1990, 2990, 3990),
    "bottoms": (1990, 2990, 3990, 4990),
    "outer": (5990, 7990, 12900, 19900),
    "dresses": (2990, 3990, 5990),
    "shoes": (2990, 4990, 8990),
    "bags": (1990, 3990, 9990),
    "accessories": (390, 990, 1490),
    "kids": (590, 990, 1990),
    "innerwear": (390, 790, 1290),
    "beauty": (550, 1100, 2200),
    "home": (990, 2990, 4990),
    "goods": (110, 330, 550),
}
PRICE_TABLE = np.array([[*PRICES[c], *PRICES[c]][:4] for c in CATEGORIES], dtype=np.int64)
_PRICE_ROWS = PRICE_TABLE.tolist()
_ABBR = {c: c[:3].upper() for c in CATEGORIES}
PAYMENTS_STORE = ("cash", "credit_card", "e_money", "qr", "debit_card")
PAYMENTS_ONLINE = ("credit_card", "convenience_store", "cash_on_delivery", "qr")
INTERACTION_KINDS = ("product_viewed", "added_to_cart", "searched", "app_opened")
SEARCHES = (
    "ワンピース",
    "デニム",
    "ダウン",
    "スニーカー",
    "tシャツ",
    "ニット",
    "リュック",
    "靴下",
    "パジャマ",
    "コート",
    "水着",
    "浴衣",
)
PREFECTURES = (
    "東京都",
    "神奈川県",
    "大阪府",
    "愛知県",
    "埼玉県",
    "千葉県",
    "兵庫県",
    "北海道",
    "福岡県",
    "静岡県",
    "京都府",
    "宮城県",
    "広島県",
    "沖縄県",
)
ID_KINDS = ("member_no", "email", "device")
TAGS = ("vip", "staff", "newsletter", "outlet", "student")


@dataclass(frozen=True)
class Spec:
    events: int
    customers: int
    seed: int

    @property
    def merges(self) -> int:
        return max(1, self.customers // 300)


# -- time --------------------------------------------------------------------------------


def _hour_cdfs() -> dict[int, np.ndarray]:
    """Cumulative weight of each hour of the window, per kind of event."""
    hours = np.arange(HOURS)
    start_jst = START + JST
    base = np.datetime64(start_jst.replace(tzinfo=None), "h")
    stamps = base + hours.astype("timedelta64[h]")
    month = (stamps.astype("datetime64[M]").astype(int) % 12) + 1
    hour = (stamps - stamps.astype("datetime64[D]")).astype(int)
    dow = (stamps.astype("datetime64[D]").astype(int) + 3) % 7  # 0 = Monday
    season = np.array([0, 1.25, 0.8, 0.95, 1.0, 1.0, 0.9, 1.2, 1.0, 0.85, 0.95, 1.1, 1.45])[month]
    growth = 1.0 + 0.35 * hours / HOURS
    store_hour = np.array(
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 6, 8, 8, 7, 7, 7, 8, 9, 8, 6, 3, 0, 0], dtype=float
    )
    online_hour = np.array(
        [3, 2, 1, 0.5, 0.5, 0.5, 1, 2, 3, 3, 3, 4, 5, 4, 4, 4, 4, 5, 6, 7, 9, 10, 9, 6], dtype=float
    )
    store_dow = np.array([0.85, 0.8, 0.85, 0.85, 1.0, 1.5, 1.45])
    online_dow = np.array([1.05, 1.0, 1.0, 1.0, 1.0, 0.95, 1.05])
    cdfs = {}
    for kind, weights in (
        (STORE, season * growth * store_hour[hour] * store_dow[dow]),
        (ONLINE, season * growth * online_hour[hour] * online_dow[dow]),
        (INTERACTION, (0.5 + 0.5 * season) * growth * online_hour[hour] * online_dow[dow]),
    ):
        cdf = np.concatenate([[0.0], np.cumsum(weights)])
        cdfs[kind] = cdf / cdf[-1]
    return cdfs


def _times(rng: np.random.Generator, cdf: np.ndarray, join_ms: np.ndarray) -> np.ndarray:
    """Instants (ms since START) drawn from ``cdf``, each at or after its ``join_ms``."""
    grid = np.arange(HOURS + 1, dtype=float)
    low = np.interp(join_ms / HOUR_MS, grid, cdf)
    target = low + rng.random(len(join_ms)) * (1.0 - low)
    hour = np.clip(np.searchsorted(cdf, target, side="right") - 1, 0, HOURS - 1)
    ms = hour.astype(np.int64) * HOUR_MS + rng.integers(0, HOUR_MS, len(join_ms))
    return np.maximum(ms, join_ms)


_HOUR_PREFIX: list[str] = [
    (START + timedelta(hours=h)).strftime("%Y-%m-%dT%H:") for h in range(HOURS + 24 * 60)
]


_MINUTE_PREFIX: dict[int, str] = {}


def iso(ms: int) -> str:
    """ms since START as pydantic's JSON form of a UTC datetime (…Z, microseconds when any)."""
    minute, rest = divmod(ms, 60_000)
    prefix = _MINUTE_PREFIX.get(minute)
    if prefix is None:
        hour, m = divmod(minute, 60)
        prefix = _MINUTE_PREFIX[minute] = f"{_HOUR_PREFIX[hour]}{m:02d}:"
    second, milli = divmod(rest, 1000)
    if milli:
        return f"{prefix}{second:02d}.{milli:03d}000Z"
    return f"{prefix}{second:02d}Z"


def _uuid7(ms_epoch: int, rand: int) -> str:
    value = (
        (ms_epoch << 80)
        | (0x7 << 76)
        | ((rand >> 62) & 0x0FFF) << 64
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid4(rand: int) -> str:
    return str(uuid.UUID(int=rand, version=4))


START_EPOCH_MS = int(START.timestamp() * 1000)


# -- the population ----------------------------------------------------------------------


class Population:
    """Customers, their identifiers, and the event plan (all numpy, built in seconds)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        self.rng = rng
        c = spec.customers
        self.customer_ids = [_uuid4(int.from_bytes(rng.bytes(16), "big")) for _ in range(c)]
        self.n_ids = rng.choice([1, 2, 3], size=c, p=[0.35, 0.4, 0.25])
        self.id_hex = rng.bytes(32 * 3 * c).hex()
        self.device_pool = max(1, c // 2)
        self.anon_hex = rng.bytes(32 * self.device_pool).hex()
        existing = rng.random(c) < 0.33
        self.join_ms = np.where(existing, 0, (rng.random(c) ** 1.15 * (HOURS * HOUR_MS * 0.97))).astype(
            np.int64
        )
        activity = rng.lognormal(0.0, 1.1, c)
        # channel preference: 0 store-first, 1 online-first, 2 omnichannel
        pref = rng.choice(3, size=c, p=[0.45, 0.3, 0.25])
        self.pref = pref
        weights = {
            STORE: activity * np.array([1.0, 0.15, 0.6])[pref],
            ONLINE: activity * np.array([0.15, 1.0, 0.6])[pref],
            INTERACTION: activity * np.array([0.3, 1.0, 0.8])[pref],
        }
        # an earlier joiner has had more time to be active: weight by the time left
        left = (HOURS * HOUR_MS - self.join_ms) / (HOURS * HOUR_MS)
        self.weights = {k: w * left / (w * left).sum() for k, w in weights.items()}
        self.cdfs = _hour_cdfs()
        self._plan()
        self._merges()

    def key(self, customer: int, slot: int) -> str:
        i = (customer * 3 + slot) * 64
        return self.id_hex[i : i + 64]

    def _plan(self) -> None:
        rng, n = self.rng, self.spec.events
        n_purchases = int(n * 0.30)
        n_returns_target = int(n * 0.03)
        kinds = rng.choice([STORE, ONLINE, APP], size=n_purchases, p=[0.55, 0.30, 0.15])
        who = np.empty(n_purchases, dtype=np.int64)
        at = np.empty(n_purchases, dtype=np.int64)
        for kind, cdf_kind in ((STORE, STORE), (ONLINE, ONLINE), (APP, ONLINE)):
            mask = kinds == kind
            chosen = rng.choice(
                self.spec.customers, size=int(mask.sum()), p=self.weights[cdf_kind if kind != APP else ONLINE]
            )
            who[mask] = chosen
            at[mask] = _times(rng, self.cdfs[cdf_kind], self.join_ms[chosen])
        anonymous = (kinds == STORE) & (rng.random(n_purchases) < 0.125)
        who[anonymous] = -1
        self.p_lines = rng.choice([1, 2, 3, 4], size=n_purchases, p=[0.45, 0.3, 0.15, 0.1])
        self.p_cat = rng.choice(
            len(CATEGORIES), size=(n_purchases, 4), p=CATEGORY_WEIGHTS / CATEGORY_WEIGHTS.sum()
        )
        self.p_price = PRICE_TABLE[self.p_cat, rng.integers(0, 4, size=(n_purchases, 4))]
        self.p_qty = rng.choice([1, 2, 3], size=(n_purchases, 4), p=[0.8, 0.15, 0.05])
        self.p_sku = rng.integers(0, 3000, size=(n_purchases, 4))
        self.p_store = rng.integers(1, 121, size=n_purchases)
        self.p_pay = rng.integers(0, 4, size=n_purchases)
        self.p_kind, self.p_who, self.p_at = kinds, who, at

        # returns: a tenth of purchases, days later (cancellations: hours later)
        candidates = rng.choice(
            n_purchases, size=min(n_purchases, int(n_returns_target * 1.15)), replace=False
        )
        cancel = rng.random(len(candidates)) < 0.2
        delay = np.where(
            cancel,
            rng.integers(HOUR_MS, 2 * DAY_MS, len(candidates)),
            rng.integers(DAY_MS, 30 * DAY_MS, len(candidates)),
        )
        r_at = at[candidates] + delay
        keep = r_at < HOURS * HOUR_MS
        candidates, cancel, r_at = (
            candidates[keep][:n_returns_target],
            cancel[keep][:n_returns_target],
            r_at[keep][:n_returns_target],
        )
        self.r_of, self.r_cancel = candidates, cancel
        self.r_reason = rng.integers(0, 3, size=len(candidates))

        n_interactions = n - n_purchases - len(candidates)
        i_who = rng.choice(self.spec.customers, size=n_interactions, p=self.weights[INTERACTION])
        i_at = _times(rng, self.cdfs[INTERACTION], self.join_ms[i_who])
        unknown = rng.random(n_interactions) < 0.10
        i_who[unknown] = -2 - rng.integers(0, self.device_pool, int(unknown.sum()))
        self.i_kind = rng.choice(4, size=n_interactions, p=[0.55, 0.15, 0.15, 0.15])
        self.i_app = rng.random(n_interactions) < 0.4
        self.i_sku = rng.integers(0, 3000, size=n_interactions)
        self.i_cat = rng.choice(
            len(CATEGORIES), size=n_interactions, p=CATEGORY_WEIGHTS / CATEGORY_WEIGHTS.sum()
        )
        self.i_who, self.i_at = i_who, i_at

        # the stream: every event by time; (kind, index into its own arrays)
        all_at = np.concatenate([at, r_at, i_at])
        all_kind = np.concatenate([kinds, np.full(len(r_at), RETURN), np.full(n_interactions, INTERACTION)])
        all_idx = np.concatenate([np.arange(n_purchases), np.arange(len(r_at)), np.arange(n_interactions)])
        order = np.argsort(all_at, kind="stable")
        self.s_at, self.s_kind, self.s_idx = all_at[order], all_kind[order].astype(np.int8), all_idx[order]
        self.s_rand = rng.integers(0, 1 << 62, size=n, dtype=np.int64)
        self.s_rec = rng.integers(50, 30_000, size=n)  # recorded_at lag, ms
        counts = np.zeros(self.spec.customers, dtype=np.int64)
        for w in (who, i_who):
            known = w[w >= 0]
            counts += np.bincount(known, minlength=self.spec.customers)
        self.events_seen = counts
        # memoryviews: indexing them gives Python ints ten times faster than numpy scalars
        flat = lambda a: memoryview(np.ascontiguousarray(a, dtype=np.int64).reshape(-1))  # noqa: E731
        self.v = {
            name: flat(getattr(self, name))
            for name in (
                "p_lines",
                "p_cat",
                "p_price",
                "p_qty",
                "p_sku",
                "p_store",
                "p_pay",
                "p_kind",
                "p_who",
                "r_of",
                "r_cancel",
                "r_reason",
                "i_who",
                "i_kind",
                "i_app",
                "i_sku",
                "i_cat",
                "n_ids",
            )
        }
        self.counts = {
            "purchases": n_purchases,
            "returns": len(r_at),
            "interactions": n_interactions,
            "anonymous_store_orders": int(anonymous.sum()),
            "unknown_device_interactions": int(unknown.sum()),
        }

    def _merges(self) -> None:
        rng = self.rng
        pairs = rng.choice(self.spec.customers, size=2 * self.spec.merges, replace=False)
        self.merge_pairs = [(int(pairs[2 * i]), int(pairs[2 * i + 1])) for i in range(self.spec.merges)]
        self.merged_into = {loser: survivor for survivor, loser in self.merge_pairs}
        self.absorbed: dict[int, list[int]] = {}
        for survivor, loser in self.merge_pairs:
            self.absorbed.setdefault(survivor, []).append(loser)

    # -- JSON ----------------------------------------------------------------------------

    def _envelope(
        self,
        event_type: str,
        at_ms: int,
        rec_lag: int,
        rand: int,
        producer: str,
        key: str,
        identifiers: list[dict[str, str]],
        payload: dict[str, object],
    ) -> dict[str, object]:
        return {
            "event_id": _uuid7(START_EPOCH_MS + at_ms, rand),
            "event_type": event_type,
            "schema_version": 1,
            "occurred_at": iso(at_ms),
            "recorded_at": iso(at_ms + rec_lag),
            "producer": producer,
            "customer_key": key,
            "identifiers": identifiers,
            "trace": None,
            "payload": payload,
        }

    def _lines(self, p: int) -> tuple[list[dict[str, object]], int]:
        v = self.v
        cats, prices, qtys, skus = v["p_cat"], v["p_price"], v["p_qty"], v["p_sku"]
        lines, total = [], 0
        for j in range(v["p_lines"][p]):
            cat = CATEGORIES[cats[4 * p + j]]
            price, qty = prices[4 * p + j], qtys[4 * p + j]
            total += price * qty
            lines.append(
                {
                    "line_no": j + 1,
                    "sku": f"{_ABBR[cat]}-{skus[4 * p + j]:05d}",
                    "category": cat,
                    "quantity": qty,
                    "unit_price": price,
                    "discount": 0,
                    "tax": 0,
                }
            )
        return lines, total

    def _purchase_key(self, p: int) -> tuple[str, list[dict[str, str]]]:
        who, kind = self.v["p_who"][p], self.v["p_kind"][p]
        if who == -1:
            return f"anonymous:store:S-{p:09d}", []
        slot = 0 if kind == STORE else min(1, self.v["n_ids"][who] - 1)
        key = self.key(who, slot)
        return key, [{"kind": ID_KINDS[slot], "hash": key}]

    def _order(self, p: int, at_ms: int, lag: int, rand: int) -> dict[str, object]:
        v = self.v
        kind = v["p_kind"][p]
        lines, subtotal = self._lines(p)
        key, identifiers = self._purchase_key(p)
        if kind == STORE:
            payload: dict[str, object] = {
                "order_id": f"S-{p:09d}",
                "currency": "JPY",
                "lines": lines,
                "order_discount": 0,
                "shipping": 0,
                "total": subtotal,
                "tax": subtotal * 10 // 110,
                "payment_method": PAYMENTS_STORE[v["p_pay"][p]],
                "points_used": 0,
                "store_id": f"S{v['p_store'][p]:03d}",
                "register_id": f"R{p % 4 + 1}",
                "receipt_no": f"{p:09d}",
                "staff_id": None,
            }
            return self._envelope(
                "order.store_completed", at_ms, lag, rand, "engagement.api", key, identifiers, payload
            )
        shipping = 0 if subtotal >= 5000 else 550
        payload = {
            "order_id": f"{'W' if kind == ONLINE else 'A'}-{p:09d}",
            "currency": "JPY",
            "lines": lines,
            "order_discount": 0,
            "shipping": shipping,
            "total": subtotal + shipping,
            "tax": subtotal * 10 // 110,
            "payment_method": PAYMENTS_ONLINE[v["p_pay"][p]],
            "points_used": 0,
            "channel": "online" if kind == ONLINE else "app",
            "shop_id": "web" if kind == ONLINE else "app",
            "shipping_prefecture": PREFECTURES[p % len(PREFECTURES)],
            "coupon_code": None,
        }
        return self._envelope(
            "order.online_completed", at_ms, lag, rand, "engagement.api", key, identifiers, payload
        )

    def _return(self, r: int, at_ms: int, lag: int, rand: int) -> dict[str, object]:
        p = self.v["r_of"][r]
        kind = self.v["p_kind"][p]
        order_id = f"{'S' if kind == STORE else 'W' if kind == ONLINE else 'A'}-{p:09d}"
        key, identifiers = self._purchase_key(p)
        cancel = self.v["r_cancel"][r] == 1
        lines, _ = self._lines(p)
        if cancel:
            returned = [
                {
                    "line_no": ln["line_no"],
                    "sku": ln["sku"],
                    "category": ln["category"],
                    "quantity": ln["quantity"],
                    "amount": ln["quantity"] * ln["unit_price"],
                }
                for ln in lines
            ]
        else:
            ln = lines[0]
            returned = [
                {
                    "line_no": 1,
                    "sku": ln["sku"],
                    "category": ln["category"],
                    "quantity": 1,
                    "amount": ln["unit_price"],
                }
            ]
        payload = {
            "return_id": f"R-{p:09d}",
            "kind": "cancellation" if cancel else "return",
            "original_order_id": order_id,
            "original_event_id": None,
            "channel": ("store", "online", "app")[kind],
            "store_id": f"S{self.v['p_store'][p]:03d}" if kind == STORE else None,
            "currency": "JPY",
            "lines": returned,
            "refund_total": sum(x["amount"] for x in returned),  # type: ignore[misc]
            "reason": None if cancel else ("size", "defect", "changed_mind")[self.v["r_reason"][r]],
        }
        return self._envelope("order.returned", at_ms, lag, rand, "engagement.api", key, identifiers, payload)

    def _interaction(self, i: int, at_ms: int, lag: int, rand: int) -> dict[str, object]:
        v = self.v
        who = v["i_who"][i]
        if who <= -2:
            d = (-2 - who) * 64
            key = self.anon_hex[d : d + 64]
            slot = 2
        else:
            slot = v["n_ids"][who] - 1
            i3 = (who * 3 + slot) * 64
            key = self.id_hex[i3 : i3 + 64]
        kind = INTERACTION_KINDS[v["i_kind"][i]]
        app = kind == "app_opened" or v["i_app"][i] == 1
        c = v["i_cat"][i]
        cat = CATEGORIES[c]
        product = kind in ("product_viewed", "added_to_cart")
        payload = {
            "kind": kind,
            "channel": "app" if app else "online",
            "session_id": f"s{key[:6]}{at_ms // 1_800_000}",
            "sku": f"{_ABBR[cat]}-{v['i_sku'][i]:05d}" if product else None,
            "category": cat if product else None,
            "quantity": 1 if kind == "added_to_cart" else None,
            "unit_price": _PRICE_ROWS[c][i % 4] if product else None,
            "query": SEARCHES[i % len(SEARCHES)] if kind == "searched" else None,
            "page": f"/products/{cat}" if product and not app else None,
            "app_version": "5.12.0" if app else None,
        }
        return self._envelope(
            "interaction.recorded",
            at_ms,
            lag,
            rand,
            "engagement.api",
            key,
            [{"kind": ID_KINDS[slot], "hash": key}],
            payload,
        )

    def stream(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, str, bytes]]:
        """(topic, customer_key, JSON) of the commerce events ``start``..``stop`` in time order."""
        stop = self.spec.events if stop is None else stop
        dumps = orjson.dumps
        for lo in range(start, stop, 50_000):
            hi = min(stop, lo + 50_000)
            at, kind, idx = self.s_at[lo:hi].tolist(), self.s_kind[lo:hi].tolist(), self.s_idx[lo:hi].tolist()
            rand, lag = self.s_rand[lo:hi].tolist(), self.s_rec[lo:hi].tolist()
            for j in range(hi - lo):
                k = kind[j]
                if k == INTERACTION:
                    event = self._interaction(idx[j], at[j], lag[j], rand[j])
                    topic = INTERACTION_TOPIC
                elif k == RETURN:
                    event = self._return(idx[j], at[j], lag[j], rand[j])
                    topic = ORDER_TOPIC
                else:
                    event = self._order(idx[j], at[j], lag[j], rand[j])
                    topic = ORDER_TOPIC
                yield topic, event["customer_key"], dumps(event)  # type: ignore[misc]

    def identity_stream(self) -> Iterator[tuple[str, str, bytes]]:
        """The merges, then one profile snapshot per customer (as of END)."""
        rng = np.random.default_rng(self.spec.seed + 1)
        end_ms = HOURS * HOUR_MS
        for survivor, loser in self.merge_pairs:
            at = end_ms + int(rng.integers(0, DAY_MS))
            payload = {
                "merge_id": _uuid4(int.from_bytes(rng.bytes(16), "big")),
                "survivor_id": self.customer_ids[survivor],
                "merged_id": self.customer_ids[loser],
                "moved": self._identifiers(loser),
                "evidence": {"rule": "exact:email", "score": None, "matched_fields": [], "decided_by": None},
            }
            yield (
                CUSTOMER_TOPIC,
                self.customer_ids[survivor],
                orjson.dumps(
                    self._envelope(
                        "customer.merged",
                        at,
                        0,
                        int(rng.integers(0, 1 << 62)),
                        "identity.relay",
                        self.customer_ids[survivor],
                        [],
                        payload,
                    )
                ),
            )
        genders = ("female", "male", "other", "unknown")
        for c in range(self.spec.customers):
            at = end_ms + DAY_MS + c % DAY_MS
            survivor = self.merged_into.get(c)
            identifiers = self._identifiers(c)
            for loser in self.absorbed.get(c, ()):
                identifiers += self._identifiers(loser)
            channels = [("store", "online", "store")[int(self.pref[c])]] + (
                ["app"] if self.n_ids[c] == 3 else []
            )
            h = hash((self.spec.seed, c)) & 0xFFFF
            payload = {
                "customer_id": self.customer_ids[c],
                "status": "merged" if survivor is not None else "active",
                "merged_into": self.customer_ids[survivor] if survivor is not None else None,
                "attributes": {
                    "gender": genders[c % 7 % 4 if c % 7 < 4 else 0],
                    "birth_year": 1950 + (c * 7919) % 56,
                    "birth_month": 1 + c % 12,
                    "prefecture": PREFECTURES[(c * 31) % len(PREFECTURES)],
                    "tags": [TAGS[h % len(TAGS)]] if h % 9 == 0 else [],
                },
                "consents": [
                    {"channel": ch, "granted": bool((c >> n) & 1), "at": iso(int(self.join_ms[c]))}
                    for n, ch in enumerate(("email", "line", "app_push"))
                    if n < int(self.n_ids[c])
                ],
                "personal": None,
                "identifiers": identifiers,
                "first_seen": iso(int(self.join_ms[c])),
                "last_seen": iso(end_ms - 1),
                "channels": channels,
                "events_seen": int(self.events_seen[c]),
            }
            key = self.customer_ids[c]
            yield (
                PROFILE_TOPIC,
                key,
                orjson.dumps(
                    self._envelope(
                        "customer.profile_snapshot",
                        at,
                        0,
                        int(self.s_rand[c % len(self.s_rand)]),
                        "identity.resolver",
                        key,
                        identifiers[:64],
                        payload,
                    )
                ),
            )

    def _identifiers(self, c: int) -> list[dict[str, str]]:
        return [{"kind": ID_KINDS[s], "hash": self.key(c, s)} for s in range(int(self.n_ids[c]))]

    def sample_customers(self, n: int, seed: int) -> list[str]:
        """Customer ids for timelines: survivors of merges included, merged ones not."""
        rng = np.random.default_rng(seed)
        picks = rng.choice(self.spec.customers, size=min(n, self.spec.customers), replace=False)
        return [self.customer_ids[int(c)] for c in picks if int(c) not in self.merged_into]


def verify_sample(raws: list[bytes]) -> int:
    """Every sampled record decodes through the contracts' registry and re-encodes to the
    same JSON (so the fast templates are exactly what the producers would publish)."""
    from crm_contracts.registry import decode, encode

    for raw in raws:
        event = decode(raw)
        again = orjson.loads(encode(event))
        original = orjson.loads(raw)
        if again != original:
            diff = {k: (original.get(k), again.get(k)) for k in original if original.get(k) != again.get(k)}
            raise AssertionError(f"{event.event_type} does not round-trip: {str(diff)[:800]}")
    return len(raws)
