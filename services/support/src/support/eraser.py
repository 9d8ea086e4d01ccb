"""Support's eraser: ``customer.erased`` makes that customer's tickets unreadable.

Consumes ``crm.identity.customer`` (consumer group ``support-erasure``) and, for each
``customer.erased``, deletes the data keys of every ticket that carried one of the
identifiers the erasure tombstoned (see support.adapters.keys). At-least-once with
de-duplication by event id; erasing is idempotent anyway. Other events on the topic are
ignored.

Known limit (docs/support.md): a ticket whose only identifier was one identity never
linked to the erased customer (a phone number the customer gave only to support) is
not found by the erasure; staff can search such tickets by that identifier and the
ticket's content stays sealed with its own key until then.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRecord

from crm_contracts.envelope import Event
from crm_contracts.events.identity import CustomerErased
from crm_contracts.topics import IDENTITY_CUSTOMER, SUPPORT_ERASURE_GROUP
from crm_platform.kafka import stream_processor
from crm_platform.settings import Settings
from support.application import SupportApplication
from support.bootstrap import SERVICE, build

log = logging.getLogger(__name__)


def erase(app: SupportApplication, event: Event) -> int:
    """Shred the tickets an erasure concerns; returns how many keys were deleted."""
    if not isinstance(event, CustomerErased):
        return 0
    hashes = [i.hash for i in event.payload.tombstoned] + [i.hash for i in event.identifiers]
    erased = app.erase_identifiers(sorted(set(hashes)))
    if erased:
        log.info("customer %s erased: the content of %d tickets shredded", event.payload.customer_id, erased)
    return erased


async def run_eraser(settings: Settings, stop: asyncio.Event, group_id: str | None = None) -> None:
    group_id = group_id or settings.kafka_topic_prefix + SUPPORT_ERASURE_GROUP
    app = build(settings)

    async def handle(event: Event, _: ConsumerRecord[bytes, bytes]) -> None:
        await asyncio.to_thread(erase, app, event)

    try:
        async with stream_processor(
            settings.kafka_bootstrap,
            group_id=group_id,
            topics=[IDENTITY_CUSTOMER],
            handler=handle,
            dedupe_path=settings.service_dir(SERVICE) / f"{group_id}.dedupe.sqlite",
            topic_prefix=settings.kafka_topic_prefix,
        ) as consumer:
            await consumer.run(stop)
    finally:
        app.close()
