"""Runs the outbox relay over a Notes store until it has caught up.

With ``--crash-after-batch N`` it SIGKILLs itself after the N-th batch was acknowledged
by Kafka and *before* its position is recorded: the worst moment for an outbox relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from relay_app import Notes, translate

from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True, help="JSON eventsourcing environment")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--crash-after-batch", type=int, default=0)
    args = parser.parse_args()

    app = Notes(env=json.loads(args.env))
    batches = 0

    def after_acks(position: int) -> None:
        nonlocal batches
        batches += 1
        if batches == args.crash_after_batch:
            print(f"crashing after acks of batch {batches}, position {position}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    async with EventProducer(args.bootstrap, client_id="relay-worker") as producer:
        relay = OutboxRelay(
            name="notes.kafka-relay",
            recorder=app.recorder,
            mapper=app.mapper,  # type: ignore[arg-type]
            tracking=app.factory.tracking_recorder(),
            translate=translate,
            producer=producer,
            batch_size=args.batch_size,
            on_published=after_acks,
        )
        # The production path: pipelined batches, positions recorded in order.
        await relay.relay_available(in_flight=4)
        print(json.dumps({"position": relay.position(), "published": relay.stats.published}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
