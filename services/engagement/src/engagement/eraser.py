"""Engagement's eraser: ``customer.erased`` shreds that customer's survey free text.

Consumes ``crm.identity.customer`` (consumer group ``engagement-erasure``; engagement's
membership worker follows other topics) and, for each ``customer.erased``, deletes the
data keys of the survey responses the customer gave by invitation — found by the
customer id the invitation named (``survey_text_keys_subjects``). From then on their
free text reads as erased in the store and everywhere its ciphertext went, while their
scores and choices still count in analytics' survey results. At-least-once with
de-duplication by event id; erasing is idempotent anyway.

It follows merges too: on ``customer.merged`` the merged customer's keys are recorded
under the survivor as well (so erasing the survivor, the id identity erases after a
merge, reaches what was answered under the merged id), and ``customer.merge_undone``
removes that again. Other events on the topic are ignored.

What is not found (docs/surveys.md, *Sealing and erasure*):

* an **anonymous** response (public link) names no customer and carries no identifier,
  so no erasure can find it; its text stays sealed under its own key;
* text a merged id answered *after* the merge was followed (an old invitation link used
  late) is recorded under the merged id only;
* form submissions keep no free text (personal fields go to identity), so there is
  nothing of theirs to shred here.

The ingestion ledger keeps each order's customer key (usually the blind index of the
strongest identifier the order carried): an erasure re-keys the orders recorded under the
erased customer's identifiers to their customer id, so the ledger holds no blind index of
them any more, while a later return of such an order is still attributed to the same
(erased) customer (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRecord

from crm_contracts.envelope import Event
from crm_contracts.events.identity import CustomerErased, CustomersMerged, MergeUndone
from crm_contracts.topics import ENGAGEMENT_ERASURE_GROUP, IDENTITY_CUSTOMER
from crm_platform.kafka import stream_processor
from crm_platform.settings import Settings
from engagement.adapters.ledger import OrderLedger, open_ledger
from engagement.survey_bootstrap import SERVICE, build_surveys
from engagement.surveys import SurveyApplication

log = logging.getLogger(__name__)
GROUP = ENGAGEMENT_ERASURE_GROUP


def apply(app: SurveyApplication, event: Event, ledger: OrderLedger | None = None) -> int:
    """Follow one identity event: an erasure shreds the customer's survey free text
    (returns how many keys were deleted) and re-keys their orders in ``ledger``; a merge
    or its undoing moves what an erasure of the survivor finds (returns 0)."""
    if isinstance(event, CustomersMerged):
        app.follow_merge(str(event.payload.survivor_id), str(event.payload.merged_id))
        return 0
    if isinstance(event, MergeUndone):
        app.follow_unmerge(str(event.payload.survivor_id), str(event.payload.restored_id))
        return 0
    if not isinstance(event, CustomerErased):
        return 0
    erased = app.erase_customers([str(event.payload.customer_id)])
    if ledger is not None:
        hashes = sorted({i.hash for i in event.payload.tombstoned} | {i.hash for i in event.identifiers})
        rekeyed = ledger.rekey_customer(hashes, str(event.payload.customer_id))
        if rekeyed:
            log.info("customer %s erased: %d ingested orders re-keyed", event.payload.customer_id, rekeyed)
    if erased:
        log.info(
            "customer %s erased: the free text of %d survey responses shredded",
            event.payload.customer_id,
            erased,
        )
    return erased


async def run_eraser(settings: Settings, stop: asyncio.Event, group_id: str | None = None) -> None:
    group_id = group_id or settings.kafka_topic_prefix + GROUP
    app = build_surveys(settings)
    ledger = open_ledger(settings)

    async def handle(event: Event, _: ConsumerRecord[bytes, bytes]) -> None:
        await asyncio.to_thread(apply, app, event, ledger)

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
        ledger.close()
        app.close()
