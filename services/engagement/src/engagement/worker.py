"""The membership worker: credits orders and returns to members as they arrive.

Consumes ``crm.commerce.order`` (purchases and returns from every channel) and
``crm.identity.profile`` (who is who, from identity) with one consumer group;
at-least-once with de-duplication by event id, offsets committed after the handler.
Crediting is idempotent per order and per return, so a redelivered event changes
nothing. A sweep every ``CRM_MEMBERSHIP_SWEEP_S`` (an hour by default) expires points
and re-ranks the members that fell due (``Attribution.sweep``), and forgets orders that
never led to a member.

One worker per deployment for now: the profile map must see every partition of the
profile topic, which a consumer group splits between workers.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from aiokafka import ConsumerRecord

from crm_contracts.envelope import Event
from crm_contracts.topics import COMMERCE_ORDER, ENGAGEMENT_MEMBERSHIP_GROUP, IDENTITY_PROFILE
from crm_platform.kafka import stream_processor
from crm_platform.settings import Settings
from engagement.bootstrap import SERVICE, build_attribution, build_membership
from engagement.membership import Attribution

log = logging.getLogger(__name__)
GROUP = ENGAGEMENT_MEMBERSHIP_GROUP


async def run_worker(settings: Settings, stop: asyncio.Event, group_id: str | None = None) -> None:
    # A topic prefix (a namespace on a shared cluster) names a group of its own.
    group_id = group_id or settings.kafka_topic_prefix + GROUP
    app = build_membership(settings)
    attribution = build_attribution(settings, app)

    async def handle(event: Event, _: ConsumerRecord[bytes, bytes]) -> None:
        credits = await asyncio.to_thread(attribution.apply, event)
        for credit in credits:
            if credit.kind in ("credited", "reversed"):
                log.debug("%s %s for member %s…", credit.kind, credit.order_key, credit.member_no_hash[:8])

    try:
        async with stream_processor(
            settings.kafka_bootstrap,
            group_id=group_id,
            topics=[COMMERCE_ORDER, IDENTITY_PROFILE],
            handler=handle,
            dedupe_path=settings.service_dir(SERVICE) / f"{group_id}.dedupe.sqlite",
            topic_prefix=settings.kafka_topic_prefix,
        ) as consumer:
            sweep = asyncio.create_task(_sweep(attribution, stop, settings.membership_sweep_s))
            await consumer.run(stop)
            sweep.cancel()
    finally:
        attribution.close()
        app.close()


async def _sweep(attribution: Attribution, stop: asyncio.Event, every_s: float) -> None:
    while not stop.is_set():
        try:
            now = datetime.now(UTC)
            evaluated = await asyncio.to_thread(attribution.sweep, now)
            dropped = await asyncio.to_thread(attribution.drop_stale, now)
        except Exception:  # a store that is briefly unavailable: the next round retries
            log.exception("membership sweep failed")
        else:
            if evaluated:
                log.info("evaluated %d members that fell due (points expiry, rank window)", evaluated)
            if dropped:
                log.info("forgot %d orders that never led to a member", dropped)
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except TimeoutError:
            continue
