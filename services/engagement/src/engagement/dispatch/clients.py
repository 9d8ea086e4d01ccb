"""Engagement's HTTP clients of identity and analytics (services never import each other).

The key (``CRM_MESSAGING_API_KEY``) holds ``analytics:read``, ``identity:contact`` and
``identity:consent``: segments and customer facts from analytics, one channel's address
at send time from identity, and an unsubscribe passed on to identity.

Identity answers an address only for a message's recipient: each contact request
carries a capability for that message (its id, campaign, recipient and channel, valid
for a few minutes) signed with the dispatcher's Ed25519 key
(``CRM_CONTACT_SIGNING_KEY``; ``crm_platform.capability``), which identity checks with
the public key. The API key alone reads no one's address.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from crm_platform import capability
from crm_platform.capability import CAPABILITY_TTL_S, DEV_CONTACT_SIGNING_KEY, ContactCapability
from engagement.domain.campaign import CampaignError, message_id


class ServiceUnavailable(CampaignError):
    """Another service did not answer usefully; the caller retries later."""


class UnknownSegment(CampaignError):
    pass


class AudienceTooLarge(CampaignError):
    pass


@dataclass(frozen=True)
class Contact:
    customer_id: uuid.UUID
    status: str
    address: str | None
    name: str | None
    consent: bool | None


class ServiceClients:
    def __init__(
        self,
        identity_url: str,
        analytics_url: str,
        api_key: str,
        timeout_s: float = 10.0,
        *,
        contact_signing_key: str = DEV_CONTACT_SIGNING_KEY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._signing_key = contact_signing_key
        self._clock = clock
        headers = {"X-API-Key": api_key}
        self.identity = httpx.AsyncClient(base_url=identity_url, headers=headers, timeout=timeout_s)
        self.analytics = httpx.AsyncClient(base_url=analytics_url, headers=headers, timeout=timeout_s)

    async def aclose(self) -> None:
        await self.identity.aclose()
        await self.analytics.aclose()

    async def _get(self, client: httpx.AsyncClient, url: str, **params: Any) -> httpx.Response:
        try:
            response = await client.get(url, params=params or None)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{client.base_url} unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise ServiceUnavailable(f"{client.base_url}{url} answered {response.status_code}")
        return response

    async def segment_members(self, segment: str, limit: int) -> list[uuid.UUID]:
        """Every customer of an analytics segment (paged), at most ``limit``."""
        out: list[uuid.UUID] = []
        offset = 0
        while True:
            response = await self._get(
                self.analytics, f"/v1/segments/{segment}/customers", limit=1000, offset=offset
            )
            if response.status_code == 404:
                raise UnknownSegment(
                    response.json().get("error", {}).get("message", f"unknown segment {segment!r}")
                )
            if response.status_code != 200:
                raise ServiceUnavailable(f"analytics answered {response.status_code} for segment {segment!r}")
            rows = response.json()["customers"]
            out += [uuid.UUID(str(r["customer_id"])) for r in rows]
            if len(out) > limit:
                raise AudienceTooLarge(f"segment {segment!r} has more than {limit} customers")
            if len(rows) < 1000:
                return out
            offset += len(rows)

    async def rank(self, customer_id: uuid.UUID) -> str | None:
        """The customer's membership rank (analytics' 360 summary); None: not a member."""
        response = await self._get(self.analytics, f"/v1/customers/{customer_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable(f"analytics answered {response.status_code} for a customer")
        rank = response.json().get("rank")
        return str(rank) if rank else None

    async def contact(
        self, customer_id: uuid.UUID, channel: str, *, campaign_id: uuid.UUID
    ) -> Contact | None:
        """The channel's address, greeting name and consent now, for this campaign's
        message to the customer; None: identity does not know the customer."""
        mid = message_id(campaign_id, customer_id)
        token = capability.sign(
            self._signing_key,
            ContactCapability(
                message_id=mid,
                campaign_id=campaign_id,
                customer_id=customer_id,
                channel=channel,
                expires_at=self._clock() + timedelta(seconds=CAPABILITY_TTL_S),
            ),
        )
        url = f"/messages/{mid}/contact"
        try:
            response = await self.identity.post(url, json={"capability": token})
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{self.identity.base_url} unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise ServiceUnavailable(f"{self.identity.base_url}{url} answered {response.status_code}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ServiceUnavailable(f"identity answered {response.status_code} for a contact point")
        data = response.json()
        return Contact(
            customer_id=uuid.UUID(str(data["customer_id"])),
            status=data["status"],
            address=data.get("address"),
            name=data.get("name"),
            consent=data.get("consent"),
        )

    async def withdraw_consent(self, customer_id: uuid.UUID, channel: str, at: datetime) -> bool:
        """Tell identity the customer opted out of ``channel``; False if it could not be
        told (try again later).

        Done, too, when there is nobody left to tell: identity does not know the customer
        (404), or answers that the customer is inactive — erased, so never messaged again
        (409 ``customer_inactive``; 410 likewise). A merged customer's withdrawal lands on
        the survivor (identity follows the merge). Any other 409 (a concurrent update of
        the customer) is worth another try."""
        try:
            response = await self.identity.put(
                f"/customers/{customer_id}/consents/{channel}",
                json={"granted": False, "at": at.isoformat()},
            )
        except httpx.HTTPError:
            return False
        if response.status_code in {200, 404, 410}:
            return True
        if response.status_code == 409:
            return _error_code(response) == "customer_inactive"
        return False


def _error_code(response: httpx.Response) -> str | None:
    """The platform's error code (``{"error": {"code": …}}``), if the body has one."""
    try:
        error = response.json().get("error")
    except ValueError:
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
