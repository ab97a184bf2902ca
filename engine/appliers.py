"""How each fact changes the exchange's state: assignment only, no validation, no decisions.

These run live (right after a fact is decided) and on replay of the exchange log, so they must
depend on nothing but the state and the fact.
"""

from __future__ import annotations

from typing import Any

from domain.markets import Asset, Market
from domain.orders import Order
from engine.book import Book
from engine.exchange import Applier, Exchange, Fact, User, Withdrawal


def list_market(ex: Exchange, listing: dict[str, Any]) -> None:
    market = Market.create(
        listing["symbol"],
        ex.assets[listing["base"]],
        ex.assets[listing["quote"]],
        listing["tick_size"],
        listing["lot_size"],
        listing["min_notional"],
        listing["maker_fee"],
        listing["taker_fee"],
    )
    ex.markets[market.symbol] = market
    ex.books[market.symbol] = Book(market.symbol)


def _user_registered(ex: Exchange, f: Fact) -> None:
    ex.users[f["user_id"]] = User(f["user_id"], f["username"], list(f["roles"]))
    ex.usernames[f["username"]] = f["user_id"]


def _asset_listed(ex: Exchange, f: Fact) -> None:
    ex.assets[f["symbol"]] = Asset(f["symbol"], f["precision"])


def _market_listed(ex: Exchange, f: Fact) -> None:
    list_market(ex, f)
    ex.status[f["symbol"]] = "trading"


def _market_status_changed(ex: Exchange, f: Fact) -> None:
    ex.status[f["market"]] = f["status"]


def _keyed(ex: Exchange, f: Fact, kind: str, user_field: str) -> None:
    ex.keys[f"{kind}:{f[user_field]}:{f['reference']}"] = None
    ex.ledger.apply(f["postings"])


def _deposited(ex: Exchange, f: Fact) -> None:
    _keyed(ex, f, "deposit", "user_id")


def _transferred(ex: Exchange, f: Fact) -> None:
    _keyed(ex, f, "transfer", "from_user_id")


def _withdrawal_requested(ex: Exchange, f: Fact) -> None:
    _keyed(ex, f, "withdrawal", "user_id")
    ex.withdrawals[f["withdrawal_id"]] = Withdrawal(f["user_id"], f["asset"], f["amount"], "pending")


def _withdrawal_ended(status: str) -> Applier:
    def apply(ex: Exchange, f: Fact) -> None:
        ex.withdrawals[f["withdrawal_id"]].status = status
        ex.ledger.apply(f["postings"])

    return apply


def _order_accepted(ex: Exchange, f: Fact) -> None:
    order = Order(
        f["order_id"],
        f["user_id"],
        f["market"],
        f["side"],
        f["order_type"],
        f["price"],
        f["quantity"],
        f["quote_quantity"],
        f["hold"],
        f["hold_asset"],
        f["time_in_force"],
        f["post_only"],
        f["self_trade_prevention"],
        f["client_order_id"],
    )
    ex.orders[order.order_id] = order
    ex.user_orders.setdefault(order.user_id, {})[order.order_id] = None
    if order.client_order_id is not None:
        ex.keys[f"order:{order.user_id}:{order.client_order_id}"] = None
    ex.ledger.apply(f["postings"])


def _trade_executed(ex: Exchange, f: Fact) -> None:
    lots, quote = f["quantity"], f["quote_amount"]
    maker = ex.orders[f["maker_order_id"]]
    maker.filled += lots
    maker.filled_quote += quote
    maker.hold -= f["maker_hold_used"]
    ex.books[f["market"]].reduce(maker, lots)
    taker = ex.orders[f["taker_order_id"]]
    taker.filled += lots
    taker.filled_quote += quote
    taker.hold -= f["taker_hold_used"]
    if taker.quantity is not None:
        taker.remaining -= lots
    ex.next_trade_id = f["trade_id"] + 1
    ex.ledger.apply(f["postings"])


def _order_booked(ex: Exchange, f: Fact) -> None:
    ex.books[f["market"]].add(ex.orders[f["order_id"]])


def _order_amended(ex: Exchange, f: Fact) -> None:
    order = ex.orders[f["order_id"]]
    book = ex.books[order.market]
    remaining = f["quantity"] - order.filled
    if f["priority"] == "lost":
        book.remove(order)
        order.price = f["price"]
        order.remaining = remaining
    else:
        book.reduce(order, order.remaining - remaining)
    order.quantity = f["quantity"]
    order.hold = f["hold"]
    ex.ledger.apply(f["postings"])


def _order_closed(ex: Exchange, f: Fact) -> None:
    order = ex.orders.pop(f["order_id"])
    if order.booked:
        ex.books[order.market].remove(order)
    del ex.user_orders[order.user_id][order.order_id]
    order.hold -= f["released"]
    ex.ledger.apply(f["postings"])


def _nothing(ex: Exchange, f: Fact) -> None:
    """Rejections change no state."""


APPLIERS: dict[str, Applier] = {
    "UserRegistered": _user_registered,
    "AssetListed": _asset_listed,
    "MarketListed": _market_listed,
    "MarketStatusChanged": _market_status_changed,
    "Deposited": _deposited,
    "WithdrawalRequested": _withdrawal_requested,
    "WithdrawalCompleted": _withdrawal_ended("completed"),
    "WithdrawalFailed": _withdrawal_ended("failed"),
    "Transferred": _transferred,
    "OrderAccepted": _order_accepted,
    "TradeExecuted": _trade_executed,
    "OrderBooked": _order_booked,
    "OrderAmended": _order_amended,
    "OrderClosed": _order_closed,
    "OrderRejected": _nothing,
    "AmendRejected": _nothing,
    "CancelRejected": _nothing,
    "RequestRejected": _nothing,
}
