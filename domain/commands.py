"""Commands: what a user asks the exchange to do, in the imperative.

A command is validated for shape here (frozen pydantic models, unknown fields refused, amounts
only as decimal strings) and appended to the requests log as a plain dict with a ``command`` name. The
engine alone decides its outcome; a command is never reused as a result.

Ids are fixed when the request is appended: an order's id is its request's id, and where the
client gives an idempotency key (client order id, reference, username, symbol) the request id
is derived from it, so a retried command lands on the same request instead of a second one.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from domain.amounts import AmountError, parse_decimal

NAMESPACE = uuid.UUID("5f0b7a4e-6c1d-4d0e-9a57-3e8f2b1c9d20")

USERNAME_RE = r"^[a-z][a-z0-9_.-]{2,31}$"
Username = Annotated[str, StringConstraints(pattern=USERNAME_RE)]
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,11}$")]
MarketSymbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,11}-[A-Z][A-Z0-9]{1,11}$")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def _decimal_string(value: Any, what: str, *, positive: bool = True) -> str:
    try:
        number = parse_decimal(value, what)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    if positive and number <= 0:
        raise ValueError(f"{what} must be positive")
    if not positive and number < 0:
        raise ValueError(f"{what} must not be negative")
    if abs(number) >= Decimal(10) ** 30:
        raise ValueError(f"{what} is too large")
    return str(value).strip()


def derived_id(*parts: str) -> uuid.UUID:
    """A request id fixed by an idempotency key: the same key always gives the same id."""
    return uuid.uuid5(NAMESPACE, "\x1f".join(parts))


def user_id_for(username: str) -> str:
    return str(derived_id("user", username))


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_log(self) -> dict[str, Any]:
        """The dict stored in the requests log: the fields plus the command's name."""
        return {"command": type(self).__name__, **self.model_dump(mode="json")}


class RegisterUser(Command):
    username: Username
    password_hash: str
    roles: list[Literal["trader", "admin", "auditor"]] = ["trader"]


class ListAsset(Command):
    symbol: Symbol
    precision: int = Field(ge=0, le=18)


class ListMarket(Command):
    symbol: MarketSymbol
    base: Symbol
    quote: Symbol
    tick_size: str
    lot_size: str
    min_notional: str = "0"
    maker_fee: str = "0"
    taker_fee: str = "0"

    @field_validator("tick_size", "lot_size")
    @classmethod
    def _positive(cls, v: Any, info: Any) -> str:
        return _decimal_string(v, info.field_name)

    @field_validator("min_notional", "maker_fee", "taker_fee")
    @classmethod
    def _non_negative(cls, v: Any, info: Any) -> str:
        return _decimal_string(v, info.field_name, positive=False)


class HaltMarket(Command):
    market: MarketSymbol


class ResumeMarket(Command):
    market: MarketSymbol


class DelistMarket(Command):
    market: MarketSymbol


class Deposit(Command):
    username: Username
    asset: Symbol
    amount: str
    reference: Key

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: Any) -> str:
        return _decimal_string(v, "amount")


class RequestWithdrawal(Command):
    asset: Symbol
    amount: str
    reference: Key

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: Any) -> str:
        return _decimal_string(v, "amount")


class CompleteWithdrawal(Command):
    withdrawal_id: uuid.UUID


class FailWithdrawal(Command):
    withdrawal_id: uuid.UUID


class Transfer(Command):
    to_username: Username
    asset: Symbol
    amount: str
    reference: Key

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: Any) -> str:
        return _decimal_string(v, "amount")


class PlaceOrder(Command):
    market: MarketSymbol
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"]
    price: str | None = None
    quantity: str | None = None
    quote_quantity: str | None = None
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    post_only: bool = False
    client_order_id: Key | None = None
    self_trade_prevention: Literal["cancel_resting", "cancel_taker", "cancel_both"] = (
        "cancel_resting"
    )

    @field_validator("price", "quantity", "quote_quantity")
    @classmethod
    def _amount(cls, v: Any, info: Any) -> str | None:
        return None if v is None else _decimal_string(v, info.field_name)

    def model_post_init(self, context: Any, /) -> None:
        if self.type == "limit":
            if self.price is None or self.quantity is None:
                raise ValueError("a limit order needs price and quantity")
            if self.quote_quantity is not None:
                raise ValueError("quote_quantity is only for market buys")
        else:
            if self.price is not None:
                raise ValueError("a market order has no price")
            if self.post_only:
                raise ValueError("a market order cannot be post-only")
            if (self.quantity is None) == (self.quote_quantity is None):
                raise ValueError("a market order needs exactly one of quantity, quote_quantity")
            if self.quote_quantity is not None and self.side != "buy":
                raise ValueError("quote_quantity is only for market buys")


class AmendOrder(Command):
    order_id: uuid.UUID
    price: str | None = None
    quantity: str | None = None

    @field_validator("price", "quantity")
    @classmethod
    def _amount(cls, v: Any, info: Any) -> str | None:
        return None if v is None else _decimal_string(v, info.field_name)

    def model_post_init(self, context: Any, /) -> None:
        if self.price is None and self.quantity is None:
            raise ValueError("an amend needs price, quantity or both")


class CancelOrder(Command):
    order_id: uuid.UUID


class CancelAllOrders(Command):
    market: MarketSymbol | None = None


COMMANDS: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        RegisterUser, ListAsset, ListMarket, HaltMarket, ResumeMarket, DelistMarket, Deposit,
        RequestWithdrawal, CompleteWithdrawal, FailWithdrawal, Transfer, PlaceOrder, AmendOrder,
        CancelOrder, CancelAllOrders,
    )
}


def request_id_for(command: Command, actor: str | None) -> uuid.UUID | None:
    """The request id fixed by the command's idempotency key, or None for a fresh one."""
    if isinstance(command, RegisterUser):
        return derived_id("user", command.username)
    if isinstance(command, ListAsset):
        return derived_id("asset", command.symbol)
    if isinstance(command, ListMarket):
        return derived_id("market", command.symbol)
    if isinstance(command, Deposit):
        return derived_id("deposit", command.username, command.reference)
    if isinstance(command, RequestWithdrawal):
        return derived_id("withdrawal", actor or "", command.reference)
    if isinstance(command, Transfer):
        return derived_id("transfer", actor or "", command.reference)
    if isinstance(command, PlaceOrder) and command.client_order_id is not None:
        return derived_id("order", actor or "", command.client_order_id)
    return None


def is_username(text: str) -> bool:
    return re.match(USERNAME_RE, text) is not None
