"""Every Kafka topic of the platform, with who produces and who consumes it.

This module is the one place topic names are spelled. Services import the constants;
the local Kafka setup and the deployment docs are generated from ``ALL_TOPICS``.

Naming: ``crm.<bounded context>.<stream>``. Events on a topic carry their own
``event_type`` and ``schema_version``: a breaking change to one event becomes a new
``schema_version`` on the same topic (with an upcaster), not a new topic.
Every topic is keyed by ``customer_key`` so one customer's events stay ordered on one
partition, and the resolver and the sink are co-partitioned by it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    #: A compacted topic keeps the latest record per key (a changelog / table).
    compacted: bool = False
    partitions: int = 6


IDENTITY_CUSTOMER = Topic(
    name="crm.identity.customer",
    description="Customer lifecycle decided by the identity service: registered, profile "
    "changed, identifiers linked/unlinked, merged, merge undone, erased.",
    producers=("identity.relay",),
    consumers=(
        "identity.resolver",
        "analytics.sink",
        "support.eraser",
        "engagement.eraser",
    ),
)

IDENTITY_PROFILE = Topic(
    name="crm.identity.profile",
    description="The unified profile per customer_id (non-personal attributes, sealed "
    "personal fields, linked identifiers). Latest value per key; tombstone on erasure.",
    producers=("identity.resolver",),
    consumers=("analytics.sink", "engagement.worker", "engagement.dispatcher"),
    compacted=True,
)

COMMERCE_ORDER = Topic(
    name="crm.commerce.order",
    description="Store POS transactions, online orders, returns and cancellations.",
    producers=("engagement.api",),
    consumers=("identity.resolver", "analytics.sink", "engagement.worker"),
)

COMMERCE_INTERACTION = Topic(
    name="crm.commerce.interaction",
    description="Web and app interactions: product viewed, added to cart, searched, app opened.",
    producers=("engagement.api",),
    consumers=("identity.resolver", "analytics.sink"),
)

ENGAGEMENT_MEMBERSHIP = Topic(
    name="crm.engagement.membership",
    description="Membership programme: enrolments, rank changes, points earned/redeemed/expired.",
    producers=("engagement.relay",),
    consumers=("identity.resolver", "analytics.sink"),
)

ENGAGEMENT_MESSAGE = Topic(
    name="crm.engagement.message",
    description="Messages sent per channel and their delivery, opens, clicks and opt-outs.",
    # The dispatcher records messages in engagement's store; only the campaign outbox
    # relay (run by ``engagement relay``) publishes them.
    producers=("engagement.relay",),
    consumers=("analytics.sink",),
)

ENGAGEMENT_FORM = Topic(
    name="crm.engagement.form",
    description="Form and survey submissions (sign-up, registration, survey answers).",
    producers=("engagement.relay",),
    consumers=("identity.resolver", "analytics.sink"),
)

SUPPORT_TICKET = Topic(
    name="crm.support.ticket",
    description="Inquiry tickets: opened, assigned, replied, escalated, status changed, resolved, "
    "rated. Subjects, bodies and comments sealed with the ticket's data key (support's).",
    producers=("support.relay",),
    consumers=("identity.resolver", "analytics.sink"),
)

DEAD_LETTER = Topic(
    name="crm.deadletter",
    description="Records a consumer could not decode or validate, with the reason in the "
    "headers. Nothing is dropped silently.",
    producers=("analytics.sink", "identity.resolver", "engagement.worker", "engagement.dispatcher"),
    consumers=("operators",),
    partitions=1,
)

ALL_TOPICS: tuple[Topic, ...] = (
    IDENTITY_CUSTOMER,
    IDENTITY_PROFILE,
    COMMERCE_ORDER,
    COMMERCE_INTERACTION,
    ENGAGEMENT_MEMBERSHIP,
    ENGAGEMENT_MESSAGE,
    ENGAGEMENT_FORM,
    SUPPORT_TICKET,
    DEAD_LETTER,
)

#: Topics whose events carry identifiers the resolver must see.
IDENTIFIER_BEARING_TOPICS: tuple[Topic, ...] = tuple(
    t for t in ALL_TOPICS if "identity.resolver" in t.consumers
)


def by_name(name: str) -> Topic:
    for topic in ALL_TOPICS:
        if topic.name == name:
            return topic
    raise KeyError(f"unknown topic {name!r}")


# -- the platform's consumer groups --------------------------------------------------------

#: Consumer groups of the platform's own stream processors. A deployment's topic prefix
#: comes first (``<prefix>identity-resolver``); the embedded analytics sink adds a suffix
#: per ClickHouse data directory (``analytics-sink-<hash>``). A deployment's exact names:
#: ``crm_platform.settings.Settings.platform_groups()``.
IDENTITY_RESOLVER_GROUP = "identity-resolver"
ENGAGEMENT_MEMBERSHIP_GROUP = "engagement-membership"
#: The campaign dispatcher's consent view follows the profile topic in this group.
ENGAGEMENT_DISPATCHER_GROUP = "engagement-dispatcher"
ANALYTICS_SINK_GROUP = "analytics-sink"
SUPPORT_ERASURE_GROUP = "support-erasure"
#: engagement's eraser: shreds an erased customer's survey free text
ENGAGEMENT_ERASURE_GROUP = "engagement-erasure"
