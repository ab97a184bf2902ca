"""Request and response bodies of the public API (API.md), named ``XCreate`` / ``XPublic``.

Request bodies refuse unknown fields. Amounts, prices and fees are decimal strings: a JSON
number where one belongs is refused (422) because these fields are ``str`` and pydantic does not
turn numbers into strings, so no float ever enters. The engine's commands (``domain.commands``)
are built from these bodies; the cross-field rules live there and surface as 422 too.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from domain.commands import USERNAME_RE

DECIMAL_RE = r"^[0-9]{1,30}(\.[0-9]{1,30})?$"
Amount = Annotated[str, StringConstraints(pattern=DECIMAL_RE), Field(examples=["0.5"])]
Username = Annotated[str, StringConstraints(pattern=USERNAME_RE), Field(examples=["carol"])]
Password = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,11}$"), Field(examples=["BTC"])]
MarketSymbol = Annotated[
    str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{1,11}-[A-Z][A-Z0-9]{1,11}$"), Field(examples=["BTC-USDT"])
]
Key = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]

T = TypeVar("T")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


class Receipt(BaseModel):
    """A command's answer at once: the request event appended and its log position."""

    event_id: str
    position: int


# -- auth and users -------------------------------------------------------------------------


class TokenCreate(Body):
    username: str
    password: str


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserCreate(Body):
    username: Username
    password: Annotated[str, StringConstraints(min_length=8, max_length=256)]


class UserCreated(Receipt):
    user_id: str


class Me(BaseModel):
    user_id: str
    username: str
    roles: list[str]


# -- assets and markets ---------------------------------------------------------------------


class AssetCreate(Body):
    symbol: Symbol
    precision: int = Field(ge=0, le=18)


class AssetPublic(BaseModel):
    symbol: str
    precision: int


class AssetReceipt(Receipt):
    symbol: str


class MarketCreate(Body):
    symbol: MarketSymbol
    base: Symbol
    quote: Symbol
    tick_size: Amount
    lot_size: Amount
    min_notional: Amount = "0"
    maker_fee: Amount = "0"
    taker_fee: Amount = "0"


class MarketPublic(BaseModel):
    symbol: str
    base: str
    quote: str
    tick_size: str
    lot_size: str
    min_notional: str
    maker_fee: str
    taker_fee: str
    status: Literal["trading", "halted", "delisted"]


class MarketReceipt(Receipt):
    symbol: str


# -- funds ----------------------------------------------------------------------------------


class DepositCreate(Body):
    username: Username
    asset: Symbol
    amount: Amount
    reference: Key


class DepositReceipt(Receipt):
    deposit_id: str


class DepositPublic(BaseModel):
    deposit_id: str
    user_id: str
    username: str
    asset: str
    amount: str
    reference: str
    status: Literal["credited"] = "credited"
    position: int


class WithdrawalCreate(Body):
    asset: Symbol
    amount: Amount
    reference: Key


class WithdrawalReceipt(Receipt):
    withdrawal_id: str


class WithdrawalPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    withdrawal_id: str
    asset: str
    amount: str
    status: Literal["pending", "completed", "failed", "rejected"]


class TransferCreate(Body):
    to_username: Username
    asset: Symbol
    amount: Amount
    reference: Key


class TransferReceipt(Receipt):
    transfer_id: str


class TransferPublic(BaseModel):
    transfer_id: str
    to_username: str
    asset: str
    amount: str
    reference: str
    position: int


class BalancePublic(BaseModel):
    asset: str
    available: str
    frozen: str
    total: str


class Balances(BaseModel):
    position: int
    balances: list[BalancePublic]


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    position: int
    event_id: str
    kind: str
    asset: str
    available_delta: str
    frozen_delta: str
    time: str


# -- orders ---------------------------------------------------------------------------------


class OrderCreate(Body):
    market: MarketSymbol
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"]
    price: Amount | None = None
    quantity: Amount | None = None
    quote_quantity: Amount | None = None
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    post_only: bool = False
    client_order_id: Key | None = None
    self_trade_prevention: Literal["cancel_resting", "cancel_taker", "cancel_both"] = "cancel_resting"


class OrderReceipt(Receipt):
    order_id: str
    status: Literal["received"] = "received"


class OrderAmend(Body):
    price: Amount | None = None
    quantity: Amount | None = None


OrderStatus = Literal["received", "rejected", "open", "partially_filled", "filled", "cancelled", "expired"]


class OrderPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    order_id: str
    client_order_id: str | None
    market: str
    side: Literal["buy", "sell"]
    type: Literal["limit", "market"]
    price: str | None
    quantity: str | None
    filled_quantity: str
    remaining_quantity: str | None
    filled_quote: str
    average_price: str | None
    fee: str
    fee_asset: str | None
    time_in_force: Literal["GTC", "IOC", "FOK"]
    post_only: bool
    status: OrderStatus
    reject_reason: str | None
    created_at: str
    updated_at: str
    position: int


class CancelAllReceipt(Receipt):
    market: str | None = None


class CancelledOrders(Receipt):
    market: str | None = None
    cancelled: list[str]


class Fill(BaseModel):
    model_config = ConfigDict(extra="allow")

    trade_id: int
    order_id: str
    market: str
    side: Literal["buy", "sell"]
    price: str
    quantity: str
    quote_quantity: str
    fee: str
    fee_asset: str
    liquidity: Literal["maker", "taker"]
    time: str
    position: int


# -- market data ----------------------------------------------------------------------------


class Book(BaseModel):
    model_config = ConfigDict(extra="allow")

    market: str
    sequence: int
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]


class Trade(BaseModel):
    model_config = ConfigDict(extra="allow")

    trade_id: int
    price: str
    quantity: str
    taker_side: Literal["buy", "sell"]
    time: str
    position: int


class Candle(BaseModel):
    open_time: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    quote_volume: str
    trades: int


class Ticker(BaseModel):
    model_config = ConfigDict(extra="allow")

    market: str
    last: str | None = None
    best_bid: str | None = None
    best_ask: str | None = None
    open: str | None = None
    high: str | None = None
    low: str | None = None
    volume: str = "0"
    change: str | None = None


# -- the log --------------------------------------------------------------------------------


class EventPublic(BaseModel):
    event_id: str
    position: int
    log: Literal["requests", "exchange"]
    type: str
    stream_id: str
    version: int
    time: str
    data: dict[str, Any]


class Notification(BaseModel):
    model_config = ConfigDict(extra="allow")

    notification_id: int
    kind: str
    time: str
    position: int
    data: dict[str, Any]


NotificationKind = Literal[
    "order_filled", "order_cancelled", "order_rejected", "order_expired", "deposit_credited",
    "withdrawal_completed", "withdrawal_failed",
]


class Preferences(BaseModel):
    kinds: list[str]
    channels: list[str]


class PreferencesUpdate(Body):
    kinds: list[NotificationKind] = Field(max_length=20)
    channels: list[Literal["ws", "email", "webhook", "sms", "push"]] = Field(max_length=5)


# -- operations -----------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")

    ready: bool
    stores: dict[str, Any]
    engine: dict[str, Any]
    projections: dict[str, Any]
