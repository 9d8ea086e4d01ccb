"""HTTP clients of the other services engagement talks to (services never import each
other): identity's public intake for form submissions (never its trusting registration:
a public form must not link, merge or grant consent for a customer identity knows),
analytics' segment API for survey audiences."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx


class UpstreamUnavailable(Exception):
    """The other service did not answer usefully: retry later (HTTP 503)."""


class UpstreamRejected(Exception):
    """The other service refused the data: ``fields`` say which and why (HTTP 422)."""

    def __init__(self, message: str, fields: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.fields = fields


@dataclass(frozen=True)
class Registered:
    customer_id: uuid.UUID
    outcome: str
    #: kinds of the identifiers given that the customer holds (the others were filed
    #: for review, not linked)
    held: tuple[str, ...] = ()


class NotHeld(Exception):
    """identity found no single customer holding the confirmed address (nothing granted)."""


class IdentityClient:
    """identity's API for forms (a key with ``identity:public-intake``): the public intake
    of the person a form describes and the consents they confirm."""

    def __init__(
        self, base_url: str, api_key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"X-API-Key": api_key},
            timeout=httpx.Timeout(10.0, connect=3.0),
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def intake(self, body: dict[str, Any]) -> Registered:
        """``POST /customers/intake`` (scope identity:public-intake): a person from a
        public form, under the unverified-source rules (never a link, a merge or a
        consent for someone identity knows). Idempotent on identity's side."""
        data = await self._post("/customers/intake", body, ok=(200, 201))
        if data is None or data.get("customer_id") is None:
            raise UpstreamUnavailable("identity found only inactive customers for these identifiers")
        return Registered(uuid.UUID(data["customer_id"]), data["outcome"], tuple(data.get("held") or ()))

    async def confirm_consent(self, body: dict[str, Any]) -> uuid.UUID:
        """``POST /customers/consent-confirmations``: a consent confirmed by double opt-in,
        with its proof. ``NotHeld`` when no single customer holds the address."""
        data = await self._post("/customers/consent-confirmations", body, ok=(200,), not_found=True)
        if data is None:
            raise NotHeld("no single customer holds this address")
        return uuid.UUID(data["customer_id"])

    async def _post(
        self, path: str, body: dict[str, Any], ok: tuple[int, ...], not_found: bool = False
    ) -> dict[str, Any] | None:
        for attempt in range(3):
            try:
                response = await self._http.post(path, json=body)
            except httpx.HTTPError as exc:
                if attempt == 2:
                    raise UpstreamUnavailable(f"identity did not answer: {type(exc).__name__}") from None
                continue
            if response.status_code in ok:
                result: dict[str, Any] = response.json()
                return result
            if response.status_code == 404 and not_found:
                return None
            if response.status_code == 422:
                error = response.json().get("error", {})
                fields = [
                    {**f, "field": "fields." + str(f.get("field", "")).removeprefix("body.")}
                    for f in error.get("fields", [])
                ]
                raise UpstreamRejected(error.get("message", "identity refused the registration"), fields)
            if response.status_code in (409, 503) and attempt < 2:
                continue
            raise UpstreamUnavailable(f"identity answered {response.status_code}")
        raise UpstreamUnavailable("identity did not answer")


class AnalyticsClient:
    """The customers of a named analytics segment (``GET /v1/segments/{name}/customers``)."""

    PAGE = 1000

    def __init__(
        self, base_url: str, api_key: str, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"X-API-Key": api_key},
            timeout=httpx.Timeout(30.0, connect=3.0),
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def segment_customers(self, segment: str, limit: int, channel: str = "all") -> list[str]:
        keys: list[str] = []
        offset = 0
        while len(keys) < limit:
            page = min(self.PAGE, limit - len(keys))
            try:
                response = await self._http.get(
                    f"/v1/segments/{segment}/customers",
                    params={"limit": page, "offset": offset, "channel": channel},
                )
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(f"analytics did not answer: {type(exc).__name__}") from None
            if response.status_code == 404:
                raise UpstreamRejected(
                    f"analytics knows no segment {segment!r}",
                    [{"field": "segment", "reason": "unknown segment", "type": "value_error"}],
                )
            if response.status_code != 200:
                raise UpstreamUnavailable(f"analytics answered {response.status_code}")
            rows = response.json()["customers"]
            keys += [str(r["customer_id"]) for r in rows]
            if len(rows) < page:
                break
            offset += page
        return keys
