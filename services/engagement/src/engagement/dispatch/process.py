"""The dispatcher process: the consent view follows identity's profiles while the
dispatcher sends what is due. Both stop on the same event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import ConsumerRecord

from crm_contracts.envelope import Event
from crm_contracts.events.identity import ProfileSnapshot
from crm_contracts.topics import IDENTITY_PROFILE
from crm_platform.kafka import SQLiteDedupeStore, stream_processor
from crm_platform.settings import Settings
from engagement.bootstrap import SERVICE
from engagement.dispatch.settings import MessagingSettings
from engagement.dispatch.wiring import DISPATCHER_GROUP, build_campaigns, build_clients, build_dispatcher

log = logging.getLogger(__name__)
#: How often the de-duplication file is pruned.
PRUNE_EVERY_S = 3600.0


def dedupe_path(settings: Settings, group_id: str) -> Path:
    return settings.service_dir(SERVICE) / f"{group_id}.dedupe.sqlite"


def prune_handled(path: Path, retention_s: float, now: datetime) -> int:
    """Forget the handled profile events older than ``retention_s``; how many."""
    store = SQLiteDedupeStore(path)
    try:
        return store.prune(retention_s, now=now.timestamp())
    finally:
        store.close()


async def run_dispatcher(
    settings: Settings,
    messaging: MessagingSettings,
    stop: asyncio.Event,
    group_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    # A topic prefix (a namespace on a shared cluster) names a group of its own.
    group_id = group_id or settings.kafka_topic_prefix + DISPATCHER_GROUP
    app = build_campaigns(settings)
    clients = build_clients(messaging)
    dispatcher, view = build_dispatcher(settings, messaging, app, clients)

    async def handle(event: Event, _: ConsumerRecord[bytes, bytes]) -> None:
        if isinstance(event, ProfileSnapshot):
            await asyncio.to_thread(view.apply, event)

    handled = dedupe_path(settings, group_id)

    async def prune() -> None:
        while not stop.is_set():
            retention = messaging.dispatch_dedupe_retention_s
            removed = await asyncio.to_thread(prune_handled, handled, retention, clock())
            if removed:
                log.info("forgot %d handled profile events older than %g s", removed, retention)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=PRUNE_EVERY_S)

    try:
        async with stream_processor(
            settings.kafka_bootstrap,
            group_id=group_id,
            topics=[IDENTITY_PROFILE],
            handler=handle,
            dedupe_path=handled,
            topic_prefix=settings.kafka_topic_prefix,
        ) as consumer:
            await asyncio.gather(consumer.run(stop), dispatcher.run(stop), prune())
    finally:
        for provider in dispatcher.providers.values():
            await provider.aclose()
        await dispatcher.templates.aclose()
        await clients.aclose()
        view.close()
        app.close()
