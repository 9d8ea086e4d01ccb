"""The identity HTTP API (port 8001). Routes parse, call the application, map the result.

Scopes: ``identity:read`` (profiles without personal data; searches answer customer
ids and what matched), ``identity:pii`` (personal data in clear: names, identifiers,
addresses), ``identity:write`` (register, update, link, merge, review),
``identity:erase`` (erasure), ``identity:audit`` (the audit log, ``GET /v1/audit``).
Two narrow scopes serve engagement's campaign dispatcher: ``identity:contact`` reads
one channel's address, the greeting name and that channel's consent for **the
recipient of a message the dispatcher signed a capability for** (``POST
/messages/{message_id}/contact``), and nothing else; ``identity:consent`` changes
consents only (an unsubscribe). ``identity:public-intake`` serves engagement's public
forms: it registers people only under the unverified-source rules (``POST
/customers/intake``: never a link, a merge or a consent for a customer already known)
and records consents confirmed by double opt-in (``POST /customers/consent-confirmations``).

Every read of personal data is written to the audit log (``crm_platform.audit``)
before it is answered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from aiokafka import AIOKafkaClient
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from crm_platform import capability
from crm_platform.audit import AuditEntry, AuditLog, audit_router
from crm_platform.http import ApiError, Principal, create_app, require_any_scope, require_scope
from crm_platform.identifiers import InvalidIdentifier, contact_value, normalise
from crm_platform.paging import DEFAULT_LIMIT, Cursor, Limit, decode_cursor, encode_cursor, invalid_cursor
from crm_platform.settings import Settings
from identity.application import (
    NAME_SEARCH_MIN,
    ConcurrentUpdate,
    CustomerNotFound,
    IdentifierHeldByOther,
    NoHolder,
    RegisterCustomer,
    SearchTooBroad,
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
    ConsentConfirmation,
    ConsentUpdate,
    ContactPoint,
    ContactRequest,
    CustomerCreate,
    CustomerPublic,
    CustomerUpdate,
    Erasure,
    IdentifierCreate,
    IdentifierKindName,
    IdentifierPublic,
    IdentifierRef,
    IntakeCreate,
    IntakeResult,
    MergeCreate,
    MergeResult,
    MergeUndone,
    MessageContactPoint,
    ProfileFields,
    Reason,
    Registration,
    ReviewApproved,
    ReviewPage,
    ReviewPublic,
    SearchQuery,
    SearchResult,
    Version,
)

customers = APIRouter(prefix="/customers", tags=["customers"])
merges = APIRouter(prefix="/merges", tags=["merges"])
reviews = APIRouter(prefix="/reviews", tags=["review queue"])
messages = APIRouter(prefix="/messages", tags=["contact points"])

Reader = Annotated[Principal, Depends(require_scope("identity:read"))]
Writer = Annotated[Principal, Depends(require_scope("identity:write"))]
Eraser = Annotated[Principal, Depends(require_scope("identity:erase"))]
ContactReader = Annotated[Principal, Depends(require_scope("identity:contact"))]
#: identity:write, or the narrower identity:consent (all an unsubscribe link needs)
ConsentWriter = Annotated[Principal, Depends(require_any_scope("identity:write", "identity:consent"))]
#: public channels (engagement's forms): only the unverified-source rules
PublicIntake = Annotated[Principal, Depends(require_scope("identity:public-intake"))]

_IDENTIFIER_FIELDS = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone")
_PERSONAL = ("name_kanji", "name_kana", "birthday", "postal_code", "address")
_ATTRIBUTES = ("gender", "prefecture", "city", "tags", "preferences", "owner")


async def get_identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


async def _audit(
    request: Request, principal: Principal, action: str, purpose: str, *customers: Any, subject: Any = None
) -> None:
    """Record a personal-data read before it is answered (one entry per customer)."""
    log: AuditLog = request.app.state.audit
    ids: list[str | None] = [str(c) for c in customers] or [None]
    await log.arecord(
        *(
            AuditEntry(
                key_id=principal.key_id,
                action=action,
                purpose=purpose,
                customer_id=c,
                subject=None if subject is None else str(subject),
            )
            for c in ids
        )
    )


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
        decided_by=principal.key_id,
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


@customers.post(
    "/intake",
    response_model=IntakeResult,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "an identifier is held already: nothing changed on anyone"}},
)
async def intake_customer(
    body: IntakeCreate, identity: IdentityDep, principal: PublicIntake, response: Response
) -> IntakeResult:
    """Register a person described by an unverified public source (a web form anyone may
    submit). Nobody holds any identifier: a new customer (201), without consents and
    without automatic fuzzy merges (a likely match is queued for review). Someone holds
    one: that customer answers (200) and **nothing changes** — identifiers they do not
    hold are filed as an intake claim in the review queue, other customers whose
    identifiers came along as a review pair; never a link, a merge or a consent."""
    given = [k for k in ("member_no", "email", "phone") if getattr(body, k)]
    identifiers = [(k, _normalised(k, getattr(body, k), k)) for k in given]
    contacts = [(k, contact_value(k, getattr(body, k))) for k in given]
    fields = body.model_fields_set - {"channel", "registered_at", "source", "member_no", "email", "phone"}
    personal, attributes = _split(body, fields)
    cmd = RegisterCustomer(
        channel=body.channel,
        identifiers=identifiers,
        contacts=contacts,
        personal={k: v for k, v in personal.items() if v is not None},
        attributes={k: v for k, v in attributes.items() if v is not None},
        consents={},
        registered_at=body.registered_at,
        decided_by=principal.key_id,
    )
    source = {"form_id": str(body.source.form_id), "submission_id": str(body.source.submission_id)}
    result = await _run(identity.app.intake, cmd, str(body.source.submission_id), source)
    if result.outcome != "created":
        response.status_code = status.HTTP_200_OK
    return IntakeResult(
        customer_id=result.customer_id,
        outcome=result.outcome,
        reviews=list(result.reviews),
        held=sorted({i.kind for i in result.held or result.linked}),
    )


@customers.post("/consent-confirmations")
async def confirm_consent(
    body: ConsentConfirmation, identity: IdentityDep, _: PublicIntake
) -> dict[str, Any]:
    """Record a consent the person confirmed by double opt-in (a signed single-use link
    sent to the e-mail address, a code sent to the phone), with its proof, for the one
    customer holding that address. 404 when nobody (or more than one customer) holds it:
    an address only filed as a claim proves nothing about anyone. The same token again
    changes nothing."""
    proof = body.proof.model_dump(mode="json")
    customer_id, version = await _run(
        identity.app.confirm_consent, body.identifier.kind, body.identifier.hash, body.channel, proof
    )
    return {"customer_id": customer_id, "version": version}


@customers.get("/search", status_code=status.HTTP_410_GONE, include_in_schema=False)
async def search_moved() -> Response:
    """Gone: a query (a name, an e-mail) in a URL lands in access logs and traces."""
    raise ApiError(410, "gone", "search takes its query in a body: POST /customers/search")


@customers.post("/search", response_model=list[SearchResult])
async def search_customers(
    body: SearchQuery, request: Request, identity: IdentityDep, principal: Reader
) -> list[SearchResult]:
    """Find customers by name (kanji, kana or romaji) or by e-mail, phone, member number.

    An identifier is matched exactly (its blind index). A name matches customers whose
    normalised name **starts with** it: at least two kanji or three kana, and at most
    ``limit`` customers — a query matching more answers 422 ``query_too_broad`` and
    nothing else, so no prefix walks the customer base. A key with ``identity:read``
    gets customer ids and what matched; names need ``identity:pii``. Every search is
    written to the audit log (who, which customers found, the kind of query)."""
    q = body.q
    kind = body.kind or ("email" if "@" in q else "phone" if sum(c.isdigit() for c in q) >= 10 else "name")
    pii = principal.allows("identity:pii")
    if kind == "name":
        column, key = identity.app.name_search_key(q)
        if len(key) < NAME_SEARCH_MIN[column]:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "q"),
                        "msg": f"a name search needs at least {NAME_SEARCH_MIN['name_kanji_key']} kanji "
                        f"or {NAME_SEARCH_MIN['loose_kana_key']} kana",
                        "type": "value_error.too_short",
                        "input": q,
                    }
                ]
            )
        rows = await _run(identity.app.search_by_name, q, body.limit)
        results = [
            SearchResult(
                customer_id=uuid.UUID(r["customer_id"]),
                name_kanji_key=r["name_kanji_key"] if pii else None,
                kana_key=r["kana_key"] if pii else None,
                prefecture=r["prefecture"],
                matched_on="name",
            )
            for r in rows
        ]
    else:
        try:
            value = normalise(kind, q)
        except InvalidIdentifier as exc:
            raise RequestValidationError(
                [{"loc": ("body", "q"), "msg": exc.reason, "type": "value_error.identifier", "input": q}]
            ) from None
        ids = await _run(identity.app.search_by_identifier, kind, value)
        results = [
            SearchResult(customer_id=i, name_kanji_key=None, kana_key=None, prefecture=None, matched_on=kind)
            for i in ids[: body.limit]
        ]
    await _audit(
        request,
        principal,
        "POST /customers/search",
        f"search:{kind}" + (":pii" if pii else ""),
        *(r.customer_id for r in results),
    )
    return results


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
    if pii:
        purpose = "profile" if as_of is None else f"profile as of {as_of.isoformat()}"
        await _audit(request, principal, "GET /customers/{customer_id}", purpose, customer_id)
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


PiiReader = Annotated[Principal, Depends(require_scope("identity:pii"))]


def _contact_answer(data: dict[str, Any], channel: str) -> dict[str, Any]:
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


async def _survivor(identity: Identity, customer_id: uuid.UUID) -> dict[str, Any]:
    """The customer, or the one it was merged into (``customer_id`` says which)."""
    data: dict[str, Any] = await _read(identity, identity.app.get_customer, customer_id)
    for _hop in range(8):  # follow merges to the survivor
        if data["status"] != "merged" or data["merged_into"] is None:
            break
        data = await _read(identity, identity.app.get_customer, data["merged_into"])
    return data


@customers.get("/{customer_id}/contact/{channel}", response_model=ContactPoint)
async def contact_point(
    customer_id: uuid.UUID,
    channel: Annotated[Literal["email", "sms", "line", "app_push"], Path(description="the message channel")],
    request: Request,
    principal: PiiReader,
) -> dict[str, Any]:
    """A channel's address, greeting name and consent, for staff (scope identity:pii;
    audited). A dispatcher, holding only identity:contact, asks by message:
    ``POST /messages/{message_id}/contact``."""
    identity: Identity = request.app.state.identity
    data = await _survivor(identity, customer_id)
    await _audit(
        request,
        principal,
        "GET /customers/{customer_id}/contact/{channel}",
        f"contact:{channel}",
        *dict.fromkeys([customer_id, data["customer_id"]]),
    )
    return _contact_answer(data, channel)


@messages.post("/{message_id}/contact", response_model=MessageContactPoint)
async def message_contact(
    message_id: uuid.UUID, body: ContactRequest, request: Request, principal: ContactReader
) -> dict[str, Any]:
    """What a message dispatcher needs at send time and no more (scope identity:contact):
    the channel's address (e-mail, E.164 phone, LINE id or app device token), the
    customer's name for the greeting, and the channel's consent — for the recipient of
    this message only. The body carries the capability engagement's dispatcher signed
    for the message (recipient, campaign, channel, expiry; ``crm_platform.capability``):
    without a valid one, 403 ``invalid_capability``, whatever the key. A merged
    customer answers for the customer it was merged into (``customer_id`` says which);
    an erased one has no address. Audited: the key, the customer, the message and its
    campaign."""
    clock = request.app.state.clock
    try:
        cap = capability.verify(request.app.state.settings.contact_verify_key, body.capability, clock())
    except capability.InvalidCapability as exc:
        raise ApiError(403, "invalid_capability", f"capability: {exc.reason}") from None
    if cap.message_id != message_id:
        raise ApiError(403, "invalid_capability", "capability: issued for another message")
    identity: Identity = request.app.state.identity
    data = await _survivor(identity, cap.customer_id)
    await _audit(
        request,
        principal,
        "POST /messages/{message_id}/contact",
        f"campaign:{cap.campaign_id}",
        *dict.fromkeys([cap.customer_id, data["customer_id"]]),
        subject=message_id,
    )
    return {"message_id": message_id, **_contact_answer(data, cap.channel)}


@customers.get("/{customer_id}/identifiers", response_model=list[IdentifierPublic])
async def list_identifiers(
    customer_id: uuid.UUID, request: Request, identity: IdentityDep, principal: Reader
) -> list[dict[str, Any]]:
    """Every identifier linked to the customer, and **why**: the rule or score, the
    fields that matched, who decided and when, and the merge that brought it."""
    rows: list[dict[str, Any]] = await _run(identity.app.identifiers_of, customer_id)
    if not principal.allows("identity:pii"):
        for row in rows:
            row["value"] = None
    else:
        await _audit(
            request, principal, "GET /customers/{customer_id}/identifiers", "identifiers", customer_id
        )
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
        decided_by=principal.key_id,
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
        decided_by=principal.key_id,
        reason=body.reason,
    )
    return MergeResult(merge_id=merge_id)


@merges.post("/{merge_id}/undo", response_model=MergeUndone)
async def undo_merge(
    merge_id: uuid.UUID, body: Reason, identity: IdentityDep, principal: Writer
) -> dict[str, Any]:
    """Undo a wrong merge: identifiers and history return to their owners at once."""
    result = await _run(identity.app.undo_merge, merge_id, reason=body.reason, undone_by=principal.key_id)
    return {"restored_customer_id": result.customer_id, "returned": [i.as_dict() for i in result.linked]}


@reviews.get("", response_model=ReviewPage)
async def list_reviews(
    identity: IdentityDep,
    _: Reader,
    status_: Annotated[Literal["open", "approved", "rejected", "all"], Query(alias="status")] = "open",
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> ReviewPage:
    """Pairs that may be one person, with the score and the fields behind it; oldest
    first, a page at a time (``next`` is the cursor of the following page)."""
    position = decode_cursor(cursor, "after")
    after = position["after"] if position else 0
    if not isinstance(after, int) or after < 0:
        raise invalid_cursor()
    rows, more = await _run(identity.app.list_reviews, status_, after=after, limit=limit)
    return ReviewPage(
        reviews=[ReviewPublic.model_validate(r) for r in rows],
        limit=limit,
        next=None if more is None else encode_cursor({"after": more}),
    )


@reviews.post("/{review_id}/approve", response_model=ReviewApproved)
async def approve_review(review_id: uuid.UUID, identity: IdentityDep, principal: Writer) -> ReviewApproved:
    """A pair: they are one person, merge them (the earlier-registered customer
    survives). An intake claim: link its identifiers to the customer (those nobody
    holds by now)."""
    merge_id = await _run(identity.app.approve_review, review_id, decided_by=principal.key_id)
    return ReviewApproved(merge_id=merge_id)


@reviews.post("/{review_id}/reject", status_code=status.HTTP_204_NO_CONTENT)
async def reject_review(review_id: uuid.UUID, body: Reason, identity: IdentityDep, principal: Writer) -> None:
    """They are two people: never propose this pair again."""
    await _run(identity.app.reject_review, review_id, decided_by=principal.key_id, reason=body.reason)


def create(
    settings: Settings | None = None,
    identity: Identity | None = None,
    *,
    audit: AuditLog | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """``clock``: now, for audit entries and capability expiry (tests pass a fixed one)."""
    settings = settings or Settings(service_name="identity")
    now = clock or (lambda: datetime.now(UTC))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.identity = identity or build(settings)
        app.state.audit = audit or AuditLog.open(settings, "identity", now)
        app.state.kafka = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
        try:
            yield
        finally:
            await app.state.kafka.close()
            if audit is None:
                app.state.audit.close()
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
            NoHolder: 404,
            MergeAlreadyUndone: 409,
            MergeNotUndoable: 409,
            ReviewAlreadyDecided: 409,
            SearchTooBroad: 422,
        },
        lifespan=lifespan,
    )
    app.state.clock = now
    for router in (customers, merges, reviews, messages):
        app.include_router(router)
    app.include_router(audit_router("identity", lambda request: request.app.state.audit))
    return app
