"""Commerce facts ingested by the engagement service (topic ``crm.commerce.order``).

Money is integer minor units of ``currency`` (yen have none: ¥1,980 is ``1980``), never
a float. A line's ``amount`` is ``quantity * unit_price - discount`` and the order's
``total`` is the sum of line amounts plus ``shipping`` minus ``order_discount``; tax is
included in prices (税込), with ``tax`` stating the part that is consumption tax.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from crm_contracts.envelope import ContractModel, Event
from crm_contracts.topics import COMMERCE_ORDER

Currency = Literal["JPY"]


class PaymentMethod(StrEnum):
    CASH = "cash"
    CREDIT_CARD = "credit_card"
    DEBIT_CARD = "debit_card"
    E_MONEY = "e_money"
    QR = "qr"
    POINTS = "points"
    BANK_TRANSFER = "bank_transfer"
    CASH_ON_DELIVERY = "cash_on_delivery"
    CONVENIENCE_STORE = "convenience_store"
    OTHER = "other"


class OrderLine(ContractModel):
    line_no: int = Field(ge=1, le=10_000)
    sku: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=100_000)
    unit_price: int = Field(ge=0, le=100_000_000)
    discount: int = Field(default=0, ge=0)
    tax: int = Field(default=0, ge=0)

    @property
    def amount(self) -> int:
        return self.quantity * self.unit_price - self.discount

    @model_validator(mode="after")
    def _discount_within_price(self) -> OrderLine:
        if self.discount > self.quantity * self.unit_price:
            raise ValueError("discount exceeds quantity * unit_price")
        return self


class _OrderBase(ContractModel):
    order_id: str = Field(min_length=1, max_length=128, description="unique per source")
    currency: Currency = "JPY"
    lines: tuple[OrderLine, ...] = Field(min_length=1, max_length=1000)
    order_discount: int = Field(default=0, ge=0)
    shipping: int = Field(default=0, ge=0)
    total: int = Field(ge=0)
    tax: int = Field(default=0, ge=0)
    payment_method: PaymentMethod = PaymentMethod.OTHER
    points_used: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _lines_sum_to_total(self) -> _OrderBase:
        expected = sum(line.amount for line in self.lines) + self.shipping - self.order_discount
        if expected != self.total:
            raise ValueError(f"lines sum to {expected}, total says {self.total}")
        return self


class StoreOrderCompletedPayload(_OrderBase):
    store_id: str = Field(min_length=1, max_length=64)
    register_id: str | None = Field(default=None, max_length=64)
    receipt_no: str | None = Field(default=None, max_length=64)
    staff_id: str | None = Field(default=None, max_length=64)


class StoreOrderCompleted(Event):
    """A POS transaction completed at a physical store."""

    TOPIC: ClassVar[str] = COMMERCE_ORDER.name
    event_type: Literal["order.store_completed"] = "order.store_completed"
    schema_version: Literal[1] = 1
    payload: StoreOrderCompletedPayload


class OnlineOrderCompletedPayload(_OrderBase):
    channel: Literal["online", "app"] = "online"
    shop_id: str = Field(default="web", min_length=1, max_length=64)
    shipping_prefecture: str | None = Field(default=None, max_length=8)
    coupon_code: str | None = Field(default=None, max_length=64)


class OnlineOrderCompleted(Event):
    """An order placed in the online shop or the app."""

    TOPIC: ClassVar[str] = COMMERCE_ORDER.name
    event_type: Literal["order.online_completed"] = "order.online_completed"
    schema_version: Literal[1] = 1
    payload: OnlineOrderCompletedPayload


__all__ = [
    "OnlineOrderCompleted",
    "OnlineOrderCompletedPayload",
    "OrderLine",
    "PaymentMethod",
    "StoreOrderCompleted",
    "StoreOrderCompletedPayload",
]
