"""The identity HTTP API (port 8001). Routes parse, call the application, map the result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from aiokafka import AIOKafkaClient
from crm_platform.http import Principal, create_app, require_scope
from crm_platform.identifiers import InvalidIdentifier, normalise
from crm_platform.settings import Settings
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError

from identity.application import CustomerNotFound, RegisterCustomer
from identity.bootstrap import Identity, build
from identity.domain.customer import (
    CustomerAlreadyRegistered,
    InvalidCustomerData,
    ObservedIdentifier,
    PersonalData,
)
from identity.entrypoints.schemas import CustomerCreate, CustomerCreated, CustomerPublic

router = APIRouter(prefix="/customers", tags=["customers"])

Reader = Annotated[Principal, Depends(require_scope("identity:read"))]
Writer = Annotated[Principal, Depends(require_scope("identity:write"))]

_IDENTIFIER_FIELDS = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone")


def get_identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


IdentityDep = Annotated[Identity, Depends(get_identity)]


def _observed(body: CustomerCreate) -> list[ObservedIdentifier]:
    observed = []
    for kind in _IDENTIFIER_FIELDS:
        raw = getattr(body, kind)
        if raw is None:
            continue
        try:
            observed.append(ObservedIdentifier(kind, normalise(kind, raw)))
        except InvalidIdentifier as exc:
            raise RequestValidationError(
                [{"loc": ("body", kind), "msg": exc.reason, "type": "value_error.identifier", "input": raw}]
            ) from None
    return observed


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CustomerCreated)
async def register_customer(body: CustomerCreate, identity: IdentityDep, _: Writer) -> CustomerCreated:
    """Register a customer observed by a channel.

    The customer_id is deterministic: the same strongest identifier always yields the same
    id. Registering an identifier that already belongs to a customer answers 409 with it.
    """
    cmd = RegisterCustomer(
        channel=body.channel,
        identifiers=_observed(body),
        personal=PersonalData(
            name_kanji=body.name_kanji,
            name_kana=body.name_kana,
            birthday=body.birthday,
            postal_code=body.postal_code,
            address=body.address,
        ),
        gender=body.gender,
        prefecture=body.prefecture,
        consents={k: v for k, v in body.consents.model_dump().items() if v is not None},
        registered_at=body.registered_at,
    )
    customer_id = await asyncio.to_thread(identity.app.register_customer, cmd)
    return CustomerCreated(customer_id=customer_id)


@router.get("/{customer_id}", response_model=CustomerPublic)
async def get_customer(customer_id: uuid.UUID, identity: IdentityDep, _: Reader) -> CustomerPublic:
    """A customer's profile, with personal data (identity:read scope)."""
    data = await asyncio.to_thread(identity.app.get_customer, customer_id)
    return CustomerPublic.model_validate(data)


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
        description="Customers, identity resolution (名寄せ) and the unified profile.",
        readiness_checks={"kafka": kafka_ready, "event_store": store_ready},
        error_map={
            CustomerNotFound: 404,
            CustomerAlreadyRegistered: 409,
            InvalidCustomerData: 422,
        },
        lifespan=lifespan,
    )
    app.include_router(router)
    return app
