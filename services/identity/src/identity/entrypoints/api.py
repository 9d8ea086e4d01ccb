"""The identity HTTP API (port 8001). Routes parse, call the application, map the result.

Scopes: ``identity:read`` (profiles without personal data), ``identity:pii`` (personal
data in clear), ``identity:write`` (register, update, link, merge, review),
``identity:erase`` (erasure). Two narrow scopes serve engagement's campaign dispatcher:
``identity:contact`` reads one channel's address, the greeting name and that channel's
consent, and nothing else; ``identity:consent`` changes consents only (an unsubscribe).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from aiokafka import AIOKafkaClient
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from crm_platform.http import Principal, create_app, require_any_scope, require_scope
from crm_platform.identifiers import InvalidIdentifier, contact_value, normalise
from crm_platform.settings import Settings
from identity.application import (
    ConcurrentUpdate,
    CustomerNotFound,
    IdentifierHeldByOther,
    RegisterCustomer,
)
from identity.bootstrap import Identity, build
from identity.domain.customer import (
    CannotMergeWithItself,
    CustomerInactive,
    InvalidCustomerData,
    VersionConflict,
)
from identity.domain.merge import MergeAlreadyUndone, MergeNotFound, MergeNotUndoable
from identity.domain.review import ReviewAlreadyDecided, ReviewNotFound
from identity.entrypoints.schemas import (
    ConsentChannelName,
    ConsentUpdate,
    ContactPoint,
    CustomerCreate,
    CustomerPublic,
    CustomerUpdate,
    Erasure,
    IdentifierCreate,
    IdentifierKindName,
    IdentifierPublic,
    IdentifierRef,
    MergeCreate,
    MergeResult,
    MergeUndone,
    ProfileFields,
    Reason,
    Registration,
    ReviewPublic,
    SearchResult,
    Version,
)

customers = APIRouter(prefix="/customers", tags=["customers"])
merges = APIRouter(prefix="/merges", tags=["merges"])
reviews = APIRouter(prefix="/reviews", tags=["review queue"])

Reader = Annotated[Principal, Depends(require_scope("identity:read"))]
Writer = Annotated[Principal, Depends(require_scope("identity:write"))]
Eraser = Annotated[Principal, Depends(require_scope("identity:erase"))]
ContactReader = Annotated[Principal, Depends(require_scope("identity:contact"))]
#: identity:write, or the narrower identity:consent (all an unsubscribe link needs)
ConsentWriter = Annotated[Principal, Depends(require_any_scope("identity:write", "identity:consent"))]

_IDENTIFIER_FIELDS = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone")
_PERSONAL = ("name_kanji", "name_kana", "birthday", "postal_code", "address")
_ATTRIBUTES = ("gender", "prefecture", "city", "tags", "preferences", "owner")


async def get_identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


def _normalised(kind: str, raw: str, field: str) -> str:
    try:
        return normalise(kind, raw)
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("body", field), "msg": exc.reason, "type": "value_error.identifier", "input": raw}]
        ) from None


def _split(body: ProfileFields, fields_set: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = body.model_dump(include=fields_set, mode="json")
    personal = {k: data[k] for k in _PERSONAL if k in data}
    attributes = {k: data[k] for k in _ATTRIBUTES if k in data}
    return personal, attributes


async def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Event-store work is blocking I/O: keep it off the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def _read(identity: Identity, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Reads from an embedded SQLite store take well under a millisecond: a thread hop
    would cost more than it saves. A networked store (PostgreSQL) still gets a thread."""
    if identity.settings.event_store == "sqlite":
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


@customers.post(
    "",
    response_model=Registration,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "the person was already known: linked, matched or merged"}},
)
async def register_customer(
    body: CustomerCreate, identity: IdentityDep, principal: Writer, response: Response
) -> Registration:
    """Register a person seen by a channel, resolving who they already are (名寄せ).

    Exact identifiers link to an existing customer when the names agree (a family sharing
    an e-mail stays two customers); otherwise fuzzy matching on names, birthday and
    address merges above the upper threshold and queues a review between the thresholds.
    Answers 201 for a new customer and 200 when the person was already known.
    """
    given = [k for k in _IDENTIFIER_FIELDS if getattr(body, k)]
    identifiers = [(k, _normalised(k, getattr(body, k), k)) for k in given]
    contacts = [(k, contact_value(k, getattr(body, k))) for k in given]
    personal, attributes = _split(body, body.model_fields_set - {"channel", "consents", "registered_at"})
    personal = {k: v for k, v in personal.items() if v is not None}
    attributes = {k: v for k, v in attributes.items() if v is not None}
    cmd = RegisterCustomer(
        channel=body.channel,
        identifiers=identifiers,
        contacts=contacts,
        personal=personal,
        attributes=attributes,
        consents={k: v for k, v in body.consents.model_dump().items() if v is not None},
        registered_at=body.registered_at,
        decided_by=principal.key_name,
    )
    result = await _run(identity.app.register, cmd)
    if result.outcome != "created":
        response.status_code = status.HTTP_200_OK
    return Registration(
        customer_id=result.customer_id,
        outcome=result.outcome,
        merges=list(result.merges),
        reviews=list(result.reviews),
    )


@customers.get("/search", response_model=list[SearchResult])
async def search_customers(
    identity: IdentityDep,
    _: Reader,
    q: Annotated[
        str, Query(min_length=1, max_length=200, description="name (kanji, kana, romaji) or identifier")
    ],
    kind: Annotated[
        Literal["name", "email", "phone", "member_no", "pos_card", "ec_account", "line_id"] | None,
        Query(description="what q is; guessed when omitted"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[SearchResult]:
    """Find customers by name in kanji, kana or romaji, or by e-mail, phone, member number."""
    kind = kind or ("email" if "@" in q else "phone" if sum(c.isdigit() for c in q) >= 10 else "name")
    if kind == "name":
        rows = await _run(identity.app.search_by_name, q, limit)
        return [
            SearchResult(
                customer_id=uuid.UUID(r["customer_id"]),
                name_kanji_key=r["name_kanji_key"],
                kana_key=r["kana_key"],
                prefecture=r["prefecture"],
                matched_on="name",
            )
            for r in rows
        ]
    try:
        value = normalise(kind, q)
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("query", "q"), "msg": exc.reason, "type": "value_error.identifier", "input": q}]
        ) from None
    ids = await _run(identity.app.search_by_identifier, kind, value)
    return [
        SearchResult(customer_id=i, name_kanji_key=None, kana_key=None, prefecture=None, matched_on=kind)
        for i in ids[:limit]
    ]


@customers.get("/{customer_id}", response_model=CustomerPublic)
async def get_customer(
    customer_id: uuid.UUID,
    request: Request,
    principal: Reader,
    as_of: Annotated[datetime | None, Query(description="the profile as it was at this instant")] = None,
) -> Response:
    """The unified profile; with ``as_of``, as it was then. Personal data needs identity:pii."""
    if as_of is not None and as_of.tzinfo is None:
        raise RequestValidationError(
            [{"loc": ("query", "as_of"), "msg": "must include a timezone offset", "type": "value_error"}]
        )
    # The hot read: the identity comes straight from the app state rather than through a
    # dependency, and the body is encoded once, here (see ``_profile_json``).
    identity: Identity = request.app.state.identity
    pii = principal.allows("identity:pii")
    data = await _read(identity, identity.app.get_customer, customer_id, as_of, personal_data=pii)
    return Response(_profile_json(data), media_type="application/json")


_PROFILE_FIELDS = tuple(CustomerPublic.model_fields)


def _profile_json(data: dict[str, Any]) -> bytes:
    """``CustomerPublic``'s JSON, byte for byte, without building the model and having
    FastAPI validate and serialise it once more. The profile is built by the application
    from its own events, so its shape is known; orjson writes UUIDs, dates and
    zero-offset datetimes (``Z``) as pydantic does. A value orjson cannot write goes
    through the model, as before."""
    profile = {name: data[name] for name in _PROFILE_FIELDS}
    try:
        return orjson.dumps(profile, option=orjson.OPT_UTC_Z)
    except TypeError:
        return CustomerPublic.model_validate(profile).model_dump_json().encode()


@customers.patch("/{customer_id}", response_model=Version)
async def update_customer(
    customer_id: uuid.UUID,
    body: CustomerUpdate,
    identity: IdentityDep,
    _: Writer,
    if_match: Annotated[
        str | None, Header(description='the version read, e.g. "3"', pattern=r'^(W/)?"?[0-9]{1,18}"?$')
    ] = None,
) -> dict[str, int]:
    """Change profile fields. ``expected_version`` (or ``If-Match``) guards against lost
    updates: a stale version answers 409."""
    expected = body.expected_version
    if expected is None and if_match:
        digits = if_match.strip('W/"')
        if not digits.isdigit():
            raise RequestValidationError(
                [{"loc": ("header", "if-match"), "msg": "must be a version number", "type": "value_error"}]
            )
        expected = int(digits)
    personal, attributes = _split(body, body.model_fields_set - {"expected_version"})
    version = await _run(identity.app.update_profile, customer_id, personal, attributes, expected)
    return {"version": version}


@customers.put("/{customer_id}/consents/{channel}", response_model=Version)
async def set_consent(
    customer_id: uuid.UUID,
    channel: ConsentChannelName,
    body: ConsentUpdate,
    identity: IdentityDep,
    _: ConsentWriter,
) -> dict[str, int]:
    """Grant or withdraw consent for one channel (opt-in / opt-out), with its timestamp.
    Needs identity:write or identity:consent."""
    version = await _run(identity.app.change_consent, customer_id, channel, body.granted, body.at)
    return {"version": version}


#: The identifier kind that is a channel's address.
_CHANNEL_ADDRESS = {"email": "email", "sms": "phone", "line": "line_id", "app_push": "device"}


@customers.get("/{customer_id}/contact/{channel}", response_model=ContactPoint)
async def contact_point(
    customer_id: uuid.UUID,
    channel: Annotated[Literal["email", "sms", "line", "app_push"], Path(description="the message channel")],
    request: Request,
    _: ContactReader,
) -> dict[str, Any]:
    """What a message dispatcher needs at send time and no more (scope identity:contact):
    the channel's address (e-mail, E.164 phone, LINE id or app device token), the
    customer's name for the greeting, and the channel's consent. A merged customer
    answers for the customer it was merged into (``customer_id`` says which); an erased
    one has no address."""
    identity: Identity = request.app.state.identity
    data = await _read(identity, identity.app.get_customer, customer_id)
    for _hop in range(8):  # follow merges to the survivor
        if data["status"] != "merged" or data["merged_into"] is None:
            break
        data = await _read(identity, identity.app.get_customer, data["merged_into"])
    personal = data["personal"] or {}
    addresses = personal.get("contacts", {}).get(_CHANNEL_ADDRESS[channel], [])
    consent = data["consents"].get(channel)
    active = data["status"] == "active"
    return {
        "customer_id": data["customer_id"],
        "status": data["status"],
        "channel": channel,
        "address": addresses[0] if addresses and active else None,
        "name": (personal.get("name_kanji") or personal.get("name_kana")) if active else None,
        "consent": None if consent is None else bool(consent["granted"]),
        "consent_at": None if consent is None else consent["at"],
    }


@customers.get("/{customer_id}/identifiers", response_model=list[IdentifierPublic])
async def list_identifiers(
    customer_id: uuid.UUID, identity: IdentityDep, principal: Reader
) -> list[dict[str, Any]]:
    """Every identifier linked to the customer, and **why**: the rule or score, the
    fields that matched, who decided and when, and the merge that brought it."""
    rows: list[dict[str, Any]] = await _run(identity.app.identifiers_of, customer_id)
    if not principal.allows("identity:pii"):
        for row in rows:
            row["value"] = None
    return rows


@customers.post(
    "/{customer_id}/identifiers", response_model=IdentifierRef, status_code=status.HTTP_201_CREATED
)
async def add_identifier(
    customer_id: uuid.UUID, body: IdentifierCreate, identity: IdentityDep, principal: Writer
) -> dict[str, str]:
    """Link an identifier to the customer (409 when it belongs to another: merge instead)."""
    value = _normalised(body.kind, body.value, "value")
    ident = await _run(
        identity.app.add_identifier,
        customer_id,
        body.kind,
        value,
        decided_by=principal.key_name,
        expected_version=body.expected_version,
        contact=contact_value(body.kind, body.value),
    )
    result: dict[str, str] = ident.as_dict()
    return result


@customers.delete(
    "/{customer_id}/identifiers/{kind}/{identifier_hash}", status_code=status.HTTP_204_NO_CONTENT
)
async def remove_identifier(
    customer_id: uuid.UUID,
    kind: IdentifierKindName,
    identifier_hash: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="the blind index")],
    identity: IdentityDep,
    _: Writer,
    reason: Annotated[str, Query(min_length=1, max_length=256)] = "removed by staff",
) -> None:
    """Unlink an identifier (e.g. a mistyped e-mail); its history stays in the log."""
    await _run(identity.app.remove_identifier, customer_id, kind, identifier_hash, reason=reason)


@customers.post("/{customer_id}/erase", response_model=Erasure)
async def erase_customer(
    customer_id: uuid.UUID, body: Reason, identity: IdentityDep, _: Eraser
) -> dict[str, Any]:
    """Erase a person (個人情報保護法 / GDPR): their data key is deleted, so every sealed copy
    of their personal data becomes unreadable; anonymous facts still count in KPIs."""
    erased = await _run(identity.app.erase, customer_id, reason=body.reason)
    return {"erased": erased}


@merges.post("", response_model=MergeResult, status_code=status.HTTP_201_CREATED)
async def merge_customers(body: MergeCreate, identity: IdentityDep, principal: Writer) -> MergeResult:
    """Merge two customers a staff member knows are one person."""
    merge_id = await _run(
        identity.app.merge,
        body.survivor_id,
        body.merged_id,
        decided_by=principal.key_name,
        reason=body.reason,
    )
    return MergeResult(merge_id=merge_id)


@merges.post("/{merge_id}/undo", response_model=MergeUndone)
async def undo_merge(
    merge_id: uuid.UUID, body: Reason, identity: IdentityDep, principal: Writer
) -> dict[str, Any]:
    """Undo a wrong merge: identifiers and history return to their owners at once."""
    result = await _run(identity.app.undo_merge, merge_id, reason=body.reason, undone_by=principal.key_name)
    return {"restored_customer_id": result.customer_id, "returned": [i.as_dict() for i in result.linked]}


@reviews.get("", response_model=list[ReviewPublic])
async def list_reviews(
    identity: IdentityDep,
    _: Reader,
    status_: Annotated[Literal["open", "approved", "rejected", "all"], Query(alias="status")] = "open",
) -> list[dict[str, Any]]:
    """Pairs that may be one person, with the score and the fields behind it."""
    rows: list[dict[str, Any]] = await _run(identity.app.list_reviews, status_)
    return rows


@reviews.post("/{review_id}/approve", response_model=MergeResult)
async def approve_review(review_id: uuid.UUID, identity: IdentityDep, principal: Writer) -> MergeResult:
    """They are one person: merge them (the earlier-registered customer survives)."""
    merge_id = await _run(identity.app.approve_review, review_id, decided_by=principal.key_name)
    return MergeResult(merge_id=merge_id)


@reviews.post("/{review_id}/reject", status_code=status.HTTP_204_NO_CONTENT)
async def reject_review(review_id: uuid.UUID, body: Reason, identity: IdentityDep, principal: Writer) -> None:
    """They are two people: never propose this pair again."""
    await _run(identity.app.reject_review, review_id, decided_by=principal.key_name, reason=body.reason)


def create(settings: Settings | None = None, identity: Identity | None = None) -> FastAPI:
    settings = settings or Settings(service_name="identity")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.identity = identity or build(settings)
        app.state.kafka = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
        try:
            yield
        finally:
            await app.state.kafka.close()
            if identity is None:
                app.state.identity.close()

    async def kafka_ready() -> None:
        kafka: AIOKafkaClient = app.state.kafka
        await kafka.bootstrap()
        await kafka.fetch_all_metadata()

    async def store_ready() -> None:
        ident: Identity = app.state.identity
        await asyncio.to_thread(ident.app.recorder.max_notification_id)

    app = create_app(
        settings=settings,
        title="identity",
        description="Customers, identity resolution (名寄せ) with reversible merges, the unified profile.",
        readiness_checks={"kafka": kafka_ready, "event_store": store_ready},
        error_map={
            CustomerNotFound: 404,
            MergeNotFound: 404,
            ReviewNotFound: 404,
            InvalidCustomerData: 422,
            CannotMergeWithItself: 422,
            CustomerInactive: 409,
            VersionConflict: 409,
            ConcurrentUpdate: 409,
            IdentifierHeldByOther: 409,
            MergeAlreadyUndone: 409,
            MergeNotUndoable: 409,
            ReviewAlreadyDecided: 409,
        },
        lifespan=lifespan,
    )
    for router in (customers, merges, reviews):
        app.include_router(router)
    return app
