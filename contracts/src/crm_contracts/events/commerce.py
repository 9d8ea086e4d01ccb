"""Commerce facts ingested by the engagement service (topic ``crm.commerce.order``).

Money is integer minor units of ``currency`` (yen have none: ¥1,980 is ``1980``), never
a float. A line's ``amount`` is ``quantity * unit_price - discount`` and the order's
``total`` is the sum of line amounts plus ``shipping`` minus ``order_discount``; tax is
included in prices (税込), with ``tax`` stating the part that is consumption tax.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from crm_contracts.envelope import ContractModel, Event
from crm_contracts.topics import COMMERCE_INTERACTION, COMMERCE_ORDER

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

    @field_validator("total")
    @classmethod
    def _lines_sum_to_total(cls, total: int, info: ValidationInfo) -> int:
        """Checked on ``total`` (the error names it), once lines, shipping and the order
        discount, declared before it, are valid themselves."""
        data = info.data
        if not {"lines", "shipping", "order_discount"} <= data.keys():
            return total  # their own errors are reported; a sum of invalid lines means nothing
        expected = sum(line.amount for line in data["lines"]) + data["shipping"] - data["order_discount"]
        if expected != total:
            raise ValueError(f"lines sum to {expected}, total says {total}")
        return total


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


class ReturnedLine(ContractModel):
    line_no: int = Field(ge=1, le=10_000, description="the original order's line")
    sku: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=100_000)
    amount: int = Field(ge=0, description="refunded for this line, tax included")


class OrderReturnedPayload(ContractModel):
    """Goods returned, or an order cancelled before fulfilment, always against the
    original order (``original_order_id`` of ``original_channel``'s source)."""

    return_id: str = Field(min_length=1, max_length=128, description="unique per source")
    kind: Literal["return", "cancellation"] = "return"
    original_order_id: str = Field(min_length=1, max_length=128)
    original_event_id: str | None = Field(default=None, max_length=64)
    channel: Literal["store", "online", "app"]
    store_id: str | None = Field(default=None, max_length=64, description="where a return was taken")
    currency: Currency = "JPY"
    lines: tuple[ReturnedLine, ...] = Field(min_length=1, max_length=1000)
    refund_total: int = Field(ge=0)
    reason: str | None = Field(default=None, max_length=64, description="e.g. size, defect, changed_mind")

    @field_validator("refund_total")
    @classmethod
    def _lines_sum_to_refund(cls, refund_total: int, info: ValidationInfo) -> int:
        if "lines" not in info.data:
            return refund_total  # the lines' own errors are reported
        expected = sum(line.amount for line in info.data["lines"])
        if expected != refund_total:
            raise ValueError(f"lines sum to {expected}, refund_total says {refund_total}")
        return refund_total


class OrderReturned(Event):
    """A return or cancellation; revenue and points earned on the lines are reversed."""

    TOPIC: ClassVar[str] = COMMERCE_ORDER.name
    event_type: Literal["order.returned"] = "order.returned"
    schema_version: Literal[1] = 1
    payload: OrderReturnedPayload


class InteractionKind(StrEnum):
    PRODUCT_VIEWED = "product_viewed"
    ADDED_TO_CART = "added_to_cart"
    REMOVED_FROM_CART = "removed_from_cart"
    SEARCHED = "searched"
    CHECKOUT_STARTED = "checkout_started"
    APP_OPENED = "app_opened"
    PAGE_VIEWED = "page_viewed"


class InteractionPayload(ContractModel):
    kind: InteractionKind
    channel: Literal["online", "app"] = "online"
    session_id: str | None = Field(default=None, max_length=128)
    sku: str | None = Field(default=None, max_length=64)
    category: str | None = Field(default=None, max_length=64)
    quantity: int | None = Field(default=None, ge=1, le=100_000)
    unit_price: int | None = Field(default=None, ge=0, le=100_000_000)
    query: str | None = Field(default=None, max_length=256, description="what was searched for")
    page: str | None = Field(default=None, max_length=512, description="path, without query string")
    app_version: str | None = Field(default=None, max_length=32)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> InteractionPayload:
        product_kinds = (
            InteractionKind.PRODUCT_VIEWED,
            InteractionKind.ADDED_TO_CART,
            InteractionKind.REMOVED_FROM_CART,
        )
        if self.kind in product_kinds and not self.sku:
            raise ValueError(f"{self.kind.value} needs a sku")
        if self.kind is InteractionKind.SEARCHED and not self.query:
            raise ValueError("searched needs a query")
        return self


class InteractionRecorded(Event):
    """Something a visitor did on the web shop or in the app."""

    TOPIC: ClassVar[str] = COMMERCE_INTERACTION.name
    event_type: Literal["interaction.recorded"] = "interaction.recorded"
    schema_version: Literal[1] = 1
    payload: InteractionPayload


__all__ = [
    "InteractionKind",
    "InteractionPayload",
    "InteractionRecorded",
    "OnlineOrderCompleted",
    "OnlineOrderCompletedPayload",
    "OrderLine",
    "OrderReturned",
    "OrderReturnedPayload",
    "PaymentMethod",
    "ReturnedLine",
    "StoreOrderCompleted",
    "StoreOrderCompletedPayload",
]
