"""Campaign dispatch throughput: personalised e-mails sent over real SMTP.

N customers are registered in identity (its real API, its own process, not timed), a campaign
to all of them is launched (10 % holdout, two variants chosen by prefecture), then one
dispatcher round is timed: per recipient the consent view, identity's contact-point
read over HTTP, the rule, the Jinja2 render with tracked links, the message recorded in
the store before the send, the SMTP conversation with a local aiosmtpd server, and the
outcome recorded. The rate limit is lifted (``CRM_DISPATCH_RATE_PER_S`` is a provider's
limit, not the dispatcher's speed).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from common import Metric, free_port, wait_until_ok

from crm_contracts.events.identity import Consent, ConsentChannel, CustomerAttributes, ProfileSnapshot
from crm_contracts.events.identity import ProfileSnapshotPayload as Profile
from crm_platform.settings import DEV_API_KEYS, Settings
from engagement.dispatch.settings import MessagingSettings
from engagement.dispatch.wiring import build_campaigns, build_clients, build_dispatcher

N = int(os.environ.get("BENCH_DISPATCH_MESSAGES", "1000"))
PREFECTURES = ("東京都", "大阪府", "北海道", "福岡県")


class _Count:
    received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 OK"


def run() -> dict[str, Metric]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "CRM_VAR_DIR": str(root / "identity"),
            "CRM_HTTP_PORT": str(port),
            "CRM_API_KEYS": json.dumps(DEV_API_KEYS),
        }
        identity = subprocess.Popen([sys.executable, "-m", "identity", "api"], env=env)
        wait_until_ok(f"http://127.0.0.1:{port}/healthz")
        smtp_port = free_port()
        box = _Count()
        controller = Controller(box, hostname="127.0.0.1", port=smtp_port)
        controller.start()
        try:
            ids = []
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "dev-admin-key"}
            ) as c:
                for i in range(N):
                    body = {
                        "channel": "online",
                        "name_kanji": f"顧客{i:05d}",
                        "email": f"bench{i}.{uuid.uuid4().hex[:6]}@example.jp",
                        "consents": {"email": True},
                    }
                    ids.append(uuid.UUID(c.post("/customers", json=body).json()["customer_id"]))
            settings = Settings(var_dir=root / "engagement")
            messaging = MessagingSettings(
                identity_url=f"http://127.0.0.1:{port}",
                smtp_port=smtp_port,
                dispatch_rate_per_s=10_000,
                dispatch_concurrency=16,
            )
            app = build_campaigns(settings)
            now = datetime.now(UTC)
            campaign = app.create(
                name="bench",
                channels=["email"],
                audience={"customer_ids": [str(i) for i in ids]},
                variants=[
                    {
                        "id": "tokyo",
                        "subject": "{{ name }}様 東京",
                        "body": "{{ name }}様 https://shop.example.jp/t",
                    },
                    {
                        "id": "other",
                        "subject": "{{ name }}様",
                        "body": "{{ name }}様 https://shop.example.jp/o",
                    },
                ],
                rules=[{"variant": "tokyo", "when": {"prefecture": ["東京都"]}}],
                default_variant="other",
                send_at=now,
                holdout_pct=10,
                attribution_days=7,
                quiet_hours=None,
                link_hosts=["shop.example.jp"],
                created_at=now,
            )
            app.launch(campaign.id, ids, now)

            async def dispatch() -> tuple[int, float]:
                clients = build_clients(messaging)
                dispatcher, view = build_dispatcher(settings, messaging, app, clients)
                for i, cid in enumerate(ids):
                    view.apply(
                        ProfileSnapshot(
                            occurred_at=now,
                            producer="identity.resolver",
                            customer_key=str(cid),
                            payload=Profile(
                                customer_id=cid,
                                attributes=CustomerAttributes(prefecture=PREFECTURES[i % 4]),
                                consents=(Consent(channel=ConsentChannel.EMAIL, granted=True, at=now),),
                            ),
                        )
                    )
                started = time.perf_counter()
                report = await dispatcher.run_once()
                seconds = time.perf_counter() - started
                view.close()
                await clients.aclose()
                for provider in dispatcher.providers.values():
                    await provider.aclose()
                return report.sent, seconds

            sent, seconds = asyncio.run(dispatch())
            app.close()
        finally:
            controller.stop()
            identity.terminate()
            identity.wait(timeout=30)
    assert box.received == sent, (box.received, sent)
    print(f"{sent} mails of {N} recipients in {seconds:.1f} s")
    return {
        "messages_per_s": Metric(sent / seconds, "messages/s", target=100),
        "recipients": Metric(N, "recipients", target=N),
    }
