"""Who may send what: each source's allowed event types, and a key's stores.

An ingestion key names its source (``source:<name>``) and may bind itself to stores
(``store:<id>`` scopes). The source decides which kinds of fact the key may send, from
an allow-list per source; the stores decide which store's facts:

- an entry is an ingestion ``type`` (``store_order``, ``online_order``, ``return``,
  ``interaction``), or a type narrowed by a qualifier, ``type:qualifier`` — for orders
  and returns the channel (``return:store``; ``online_order:app``), for interactions the
  kind (``interaction:product_viewed``);
- a source not listed may send nothing;
- :data:`DEFAULT_SOURCES` is what the POS, the web shop and the app send (the demo's
  and the contracts' shapes); ``CRM_INGEST_SOURCES`` (JSON, source -> entries) adds
  sources or replaces a source's list, e.g. ``{"kiosk": ["interaction:product_viewed"]}``.

A key bound to stores may send only events that name one of its stores
(``payload.store_id``): a store order, or a return taken there. An online order or an
interaction names no store and is refused to such a key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from crm_contracts.events.commerce import InteractionKind

#: The ingestion types and the qualifiers each takes.
QUALIFIERS: dict[str, frozenset[str]] = {
    "store_order": frozenset({"store"}),
    "online_order": frozenset({"online", "app"}),
    "return": frozenset({"store", "online", "app"}),
    "interaction": frozenset(k.value for k in InteractionKind),
}

#: What each source sends, unless ``CRM_INGEST_SOURCES`` says otherwise.
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    # The registers: sales and returns at a store.
    "pos": ("store_order", "return:store"),
    # The web shop's backend: orders placed online or in the app (one order id space),
    # their returns and cancellations, and what visitors do on the site and in the app.
    "webshop": ("online_order", "return:online", "return:app", "interaction"),
    # The app itself, when it reports its own events: interactions only.
    "app": ("interaction",),
}


class SourceRulesError(ValueError):
    pass


def parse_entries(source: str, entries: Iterable[str]) -> frozenset[str]:
    """A source's entries, checked: an unknown type or qualifier is a configuration error."""
    out = set()
    for entry in entries:
        kind, _, qualifier = entry.partition(":")
        if kind not in QUALIFIERS:
            raise SourceRulesError(
                f"ingest source {source!r}: {entry!r} is not one of {', '.join(sorted(QUALIFIERS))}"
            )
        if qualifier and qualifier not in QUALIFIERS[kind]:
            raise SourceRulesError(
                f"ingest source {source!r}: {kind} takes one of {', '.join(sorted(QUALIFIERS[kind]))}, "
                f"not {qualifier!r}"
            )
        out.add(entry)
    return frozenset(out)


@dataclass(frozen=True)
class SourceRules:
    """Each source's allowed entries (the defaults, updated by configuration)."""

    allowed: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, configured: Mapping[str, Iterable[str]] | None = None) -> SourceRules:
        merged: dict[str, Iterable[str]] = {**DEFAULT_SOURCES, **(configured or {})}
        return cls({name: parse_entries(name, entries) for name, entries in merged.items()})

    def for_source(self, name: str) -> frozenset[str]:
        return self.allowed.get(name, frozenset())


def may_send(allowed: frozenset[str] | None, kind: str, qualifier: str) -> bool:
    """Whether entries ``allowed`` (``None``: anything) admit a ``kind`` event of
    ``qualifier`` (its channel, or an interaction's kind)."""
    return allowed is None or kind in allowed or f"{kind}:{qualifier}" in allowed
