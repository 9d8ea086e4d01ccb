"""The support team's rules, as data: SLA targets per priority and escalation routing.

Pure domain (standard library only). A retailer changes them with a JSON file
(``CRM_SUPPORT_POLICY``, see docs/support.md); these defaults are what a mid-sized
fashion chain's customer centre typically promises.

**SLA rules** (written down here and in docs/support.md):

* Two targets per priority, fixed when the ticket is opened (a later policy change does
  not rewrite the promise made to the customer): the *first response* (the first reply
  by staff) and the *resolution*.
* Time is calendar time (the customer centre answers 7 days a week, phone and chat
  included); the due instants are stored with the ticket.
* While a ticket is ``pending`` (waiting on the customer) the resolution clock is
  paused: the due instant moves by the time spent waiting. The first-response clock
  never pauses.
* A target is *breached* at an instant when it was not met by its due instant: a
  first response after (or still missing at) its due instant, a resolution likewise.
  A ticket resolved late stays breached; reopening does not reset the promise.

**Routing rules**: the first rule whose conditions all hold names where an escalation
goes. A target may use ``{store_id}`` (the ticket's store), so complaints about a
store reach that store's manager; a rule with ``on_open`` escalates the ticket as soon
as it is opened (complaints reach sales/the store without waiting for an agent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")
CHANNELS: tuple[str, ...] = ("phone", "email", "chat", "store", "form", "line")
_TARGET = re.compile(r"^[a-z][a-z0-9_-]{0,40}(:[A-Za-z0-9_.{}-]{1,64})?$")


class PolicyError(ValueError):
    """A policy file that cannot be used, with the reason."""


@dataclass(frozen=True)
class SlaTarget:
    first_response: timedelta
    resolution: timedelta


@dataclass(frozen=True)
class RoutingRule:
    name: str
    #: Where escalations go: ``sales``, ``support-lead``, ``store-manager:{store_id}``...
    target: str
    categories: frozenset[str] = frozenset()
    priorities: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()
    #: Only tickets that name a store (``{store_id}`` in the target needs one).
    needs_store: bool = False
    #: Escalate at once when a matching ticket is opened.
    on_open: bool = False

    def matches(self, category: str, priority: str, channel: str, store_id: str | None) -> bool:
        return (
            (not self.categories or category in self.categories)
            and (not self.priorities or priority in self.priorities)
            and (not self.channels or channel in self.channels)
            and (not self.needs_store or bool(store_id))
        )

    def route(self, store_id: str | None) -> str:
        return self.target.replace("{store_id}", store_id or "")


DEFAULT_SLA: dict[str, SlaTarget] = {
    "urgent": SlaTarget(timedelta(hours=1), timedelta(hours=8)),
    "high": SlaTarget(timedelta(hours=4), timedelta(hours=24)),
    "normal": SlaTarget(timedelta(hours=24), timedelta(hours=72)),
    "low": SlaTarget(timedelta(hours=72), timedelta(days=7)),
}

DEFAULT_ROUTING: tuple[RoutingRule, ...] = (
    RoutingRule(
        "complaint-about-store",
        "store-manager:{store_id}",
        categories=frozenset({"complaint"}),
        needs_store=True,
        on_open=True,
    ),
    RoutingRule("complaint", "sales", categories=frozenset({"complaint"}), on_open=True),
    RoutingRule("urgent", "support-lead", priorities=frozenset({"urgent"})),
    RoutingRule("default", "support-lead"),
)


@dataclass(frozen=True)
class Policy:
    sla: dict[str, SlaTarget] = field(default_factory=lambda: dict(DEFAULT_SLA))
    routing: tuple[RoutingRule, ...] = DEFAULT_ROUTING

    def target(self, priority: str) -> SlaTarget:
        return self.sla[priority]

    def route(
        self, category: str, priority: str, channel: str, store_id: str | None
    ) -> tuple[str, str] | None:
        """(target, rule name) of the first matching rule, None when no rule matches."""
        for rule in self.routing:
            if rule.matches(category, priority, channel, store_id):
                return rule.route(store_id), rule.name
        return None

    def on_open(
        self, category: str, priority: str, channel: str, store_id: str | None
    ) -> tuple[str, str] | None:
        """The escalation a new ticket gets at once, if the first matching rule says so."""
        for rule in self.routing:
            if rule.matches(category, priority, channel, store_id):
                return (rule.route(store_id), rule.name) if rule.on_open else None
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "sla": {
                p: {
                    "first_response_seconds": int(t.first_response.total_seconds()),
                    "resolution_seconds": int(t.resolution.total_seconds()),
                }
                for p, t in self.sla.items()
            },
            "routing": [
                {
                    "name": r.name,
                    "target": r.target,
                    "categories": sorted(r.categories),
                    "priorities": sorted(r.priorities),
                    "channels": sorted(r.channels),
                    "needs_store": r.needs_store,
                    "on_open": r.on_open,
                }
                for r in self.routing
            ],
        }


def policy_from_dict(data: dict[str, Any]) -> Policy:
    """A policy from its JSON form (``describe``'s shape, hours accepted too)."""
    if not isinstance(data, dict):
        raise PolicyError("a policy is a JSON object with 'sla' and/or 'routing'")
    sla = dict(DEFAULT_SLA)
    for priority, spec in (data.get("sla") or {}).items():
        if priority not in PRIORITIES:
            raise PolicyError(f"sla: unknown priority {priority!r}; one of {PRIORITIES}")
        try:
            first = _seconds(spec, "first_response")
            resolution = _seconds(spec, "resolution")
        except (TypeError, ValueError, KeyError) as exc:
            raise PolicyError(f"sla.{priority}: {exc}") from None
        if not 0 < first <= resolution:
            raise PolicyError(f"sla.{priority}: 0 < first response ≤ resolution is required")
        sla[priority] = SlaTarget(timedelta(seconds=first), timedelta(seconds=resolution))
    routing = DEFAULT_ROUTING
    if "routing" in data:
        rules = []
        for i, spec in enumerate(data["routing"] or []):
            try:
                rule = RoutingRule(
                    name=str(spec["name"])[:64],
                    target=str(spec["target"]),
                    categories=frozenset(spec.get("categories", ())),
                    priorities=frozenset(spec.get("priorities", ())),
                    channels=frozenset(spec.get("channels", ())),
                    needs_store=bool(spec.get("needs_store", False)),
                    on_open=bool(spec.get("on_open", False)),
                )
            except (TypeError, KeyError) as exc:
                raise PolicyError(f"routing[{i}]: missing or invalid {exc}") from None
            if not _TARGET.match(rule.target):
                raise PolicyError(
                    f"routing[{i}].target: {rule.target!r} is not like"
                    " 'sales' or 'store-manager:{store_id}'"
                )
            if "{store_id}" in rule.target and not rule.needs_store:
                raise PolicyError(f"routing[{i}]: a target with {{store_id}} needs needs_store: true")
            if unknown := rule.priorities - set(PRIORITIES):
                raise PolicyError(f"routing[{i}].priorities: unknown {sorted(unknown)}")
            if unknown := rule.channels - set(CHANNELS):
                raise PolicyError(f"routing[{i}].channels: unknown {sorted(unknown)}")
            rules.append(rule)
        routing = tuple(rules)
    return Policy(sla=sla, routing=routing)


def _seconds(spec: dict[str, Any], name: str) -> float:
    if f"{name}_seconds" in spec:
        return float(spec[f"{name}_seconds"])
    return float(spec[f"{name}_hours"]) * 3600
