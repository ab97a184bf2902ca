"""Deciding orders: risk check and hold → match → settle both sides and fees → release the rest.

Each function reads the state, raises ``Reject`` before emitting anything when the request must
be refused, and otherwise emits facts in the order they happen. Matching is price-time priority
at the maker's price. A taker's plan is computed first, reading the book only (``plan``), and
then executed fact by fact, so FOK and market buys by base quantity know their outcome and
exact cost before any money moves.
"""

from __future__ import annotations

from collections.abc import Callable

from domain.amounts import AmountError, to_units
from domain.ledger import FEES
from domain.markets import TRADING, Market, fee
from domain.orders import BUY, SELL, Order
from engine.exchange import Exchange, Reject, RequestRecord

CANCEL_RESTING = "cancel_resting"
CANCEL_TAKER = "cancel_taker"
CANCEL_BOTH = "cancel_both"


# ``Market.price_ticks`` and ``quantity_lots`` of the strings seen, remembered: parsing a decimal
# string is ~1.5 µs (several ``Decimal`` operations), and orders repeat the same prices and
# quantities over and over. Both are pure functions of the market's tick or lot size and the
# string, so the memo is keyed by those; only results are kept (a refused string raises every
# time, with the same error), and it is emptied when it reaches MEMO_SIZE entries.
MEMO_SIZE = 100_000
_converted: dict[tuple[bool, str, str], int] = {}


def price_ticks(market: Market, text: object) -> int:
    """``market.price_ticks(text)``, remembered."""
    return _remembered(market.price_ticks, True, market.tick_size, text)


def quantity_lots(market: Market, text: object) -> int:
    """``market.quantity_lots(text)``, remembered."""
    return _remembered(market.quantity_lots, False, market.lot_size, text)


def _remembered(convert: Callable[[object], int], price: bool, size: str, text: object) -> int:
    if type(text) is not str:
        return convert(text)
    key = (price, size, text)
    units = _converted.get(key)
    if units is None:
        units = convert(text)
        if len(_converted) >= MEMO_SIZE:
            _converted.clear()
        _converted[key] = units
    return units


def merge_postings(*rows: tuple[str, str, int, int]) -> list[list[object]]:
    """Postings in a stable order, one row per (account, asset), zero rows dropped."""
    merged: dict[tuple[str, str], list[int]] = {}
    for account, asset, d_available, d_frozen in rows:
        row = merged.setdefault((account, asset), [0, 0])
        row[0] += d_available
        row[1] += d_frozen
    return [[a, s, v[0], v[1]] for (a, s), v in merged.items() if v[0] or v[1]]


def one_posting(account: str, asset: str, d_available: int, d_frozen: int) -> list[list[object]]:
    """``merge_postings((account, asset, d_available, d_frozen))`` without the merging a single
    row does not need: the row, or nothing when both deltas are zero."""
    if d_available or d_frozen:
        return [[account, asset, d_available, d_frozen]]
    return []


class Plan:
    """What a taker would do against the book: fills and self-trade cancels, in order.

    A plain class with its own ``__init__``, not a dataclass: compiled (setup.py), a dataclass's
    generated ``__init__`` stays interpreted, and one is made per order taking."""

    __slots__ = ("cost", "lots", "steps", "stop")

    def __init__(self) -> None:
        self.steps: list[tuple[Order, int]] = []  # lots 0 = cancel the maker
        self.lots = 0
        self.cost = 0
        self.stop: str | None = None  # "self_trade", "budget_spent" or None


def plan(
    ex: Exchange,
    market: Market,
    side: str,
    user_id: str,
    limit: int | None,
    lots: int | None,
    budget: int | None,
    stp: str,
) -> Plan:
    """Walk the book as a taker would, without changing it."""
    result = Plan()
    want = lots
    nu = market.notional_units
    for maker in ex.books[market.symbol].makers(side, limit):
        if maker.user_id == user_id:
            if stp == CANCEL_TAKER:
                result.stop = "self_trade"
                break
            result.steps.append((maker, 0))
            if stp == CANCEL_BOTH:
                result.stop = "self_trade"
                break
            continue
        take = maker.remaining if want is None else min(maker.remaining, want)
        spent = False
        if budget is not None:
            affordable = (budget - result.cost) // (maker.price * nu)  # type: ignore[operator]
            if affordable < take:  # prices only get worse from here: the budget is spent
                take, spent = affordable, True
        if take:
            result.steps.append((maker, take))
            result.lots += take
            result.cost += take * maker.price * nu  # type: ignore[operator]
        if spent:
            result.stop = "budget_spent"
            break
        if want is not None:
            want -= take
            if want == 0:
                break
    return result


def place_order(ex: Exchange, req: RequestRecord) -> None:
    cmd = req.command
    user_id = ex.require_actor(req, "trader")
    market = ex.market(cmd["market"])
    if ex.status.get(market.symbol) != TRADING:
        raise Reject("market_not_trading", f"{market.symbol} is {ex.status.get(market.symbol)}")
    side, order_type = cmd["side"], cmd["type"]
    if side not in (BUY, SELL) or order_type not in ("limit", "market"):
        raise Reject("invalid_request", "side must be buy or sell, type limit or market")
    coid = cmd.get("client_order_id")
    if coid is not None and f"order:{user_id}:{coid}" in ex.keys:
        raise Reject("duplicate", f"client order id {coid!r} was used before")
    stp = cmd.get("self_trade_prevention", CANCEL_RESTING)
    tif = cmd.get("time_in_force", "GTC") if order_type == "limit" else "IOC"
    post_only = bool(cmd.get("post_only", False))
    price = lots = quote_quantity = None
    try:
        if order_type == "limit":
            price = price_ticks(market, cmd["price"])
        if cmd.get("quantity") is not None:
            lots = quantity_lots(market, cmd["quantity"])
    except AmountError as exc:
        code = "invalid_price" if "price" in str(exc) else "invalid_quantity"
        raise Reject(code, str(exc)) from None
    if order_type == "market" and cmd.get("quote_quantity") is not None:
        if side != BUY or lots is not None:
            raise Reject("invalid_request", "quote_quantity is only for market buys")
        try:
            quote_quantity = to_units(cmd["quote_quantity"], market.quote_precision, "quote_quantity")
        except AmountError as exc:
            raise Reject("invalid_amount", str(exc)) from None
        if quote_quantity <= 0:
            raise Reject("invalid_amount", "quote_quantity must be positive")
    elif lots is None:
        raise Reject("invalid_quantity", "quantity is required")

    book = ex.books[market.symbol]
    if order_type == "limit":
        assert price is not None and lots is not None
        if market.cost(price, lots) < market.min_notional_units:
            raise Reject("min_notional", f"order value is below {market.min_notional} {market.quote}")
        if post_only and book.would_take(side, price):
            raise Reject("would_take", "a post-only order would have taken liquidity")
        if tif == "FOK" and plan(ex, market, side, user_id, price, lots, None, stp).lots < lots:
            raise Reject("fok_not_filled", "the book cannot fill the whole quantity at once")
        hold = market.cost(price, lots) if side == BUY else market.base_units(lots)
    elif quote_quantity is not None:
        if quote_quantity < market.min_notional_units:
            raise Reject("min_notional", f"order value is below {market.min_notional} {market.quote}")
        hold = quote_quantity
    elif side == BUY:
        hold = plan(ex, market, side, user_id, None, lots, None, stp).cost
    else:
        hold = market.base_units(lots)  # type: ignore[arg-type]
    hold_asset = market.quote if side == BUY else market.base
    available = ex.ledger.available(user_id, hold_asset)
    if hold > available:
        raise Reject("insufficient_funds", f"needs {hold} {hold_asset} units, has {available}")

    ex.emit(
        {
            "type": "OrderAccepted",
            "order_id": req.request_id,
            "user_id": user_id,
            "client_order_id": coid,
            "market": market.symbol,
            "side": side,
            "order_type": order_type,
            "price": price,
            "quantity": lots,
            "quote_quantity": quote_quantity,
            "time_in_force": tif,
            "post_only": post_only,
            "self_trade_prevention": stp,
            "hold_asset": hold_asset,
            "hold": hold,
            "postings": one_posting(user_id, hold_asset, -hold, hold),
        }
    )
    take(ex, market, ex.orders[req.request_id])


def take(ex: Exchange, market: Market, order: Order) -> None:
    """Match an accepted order as a taker, then rest it or close it."""
    budget = order.hold if order.quote_quantity is not None else None
    lots = order.remaining if order.quantity is not None else None
    p = plan(ex, market, order.side, order.user_id, order.price, lots, budget, order.stp)
    for maker, fill in p.steps:
        if fill == 0:
            close(ex, maker, "cancelled", "self_trade")
            continue
        trade(ex, market, maker, order, fill)
        if maker.remaining == 0:
            close(ex, maker, "filled", "filled")
    if order.quantity is not None and order.remaining == 0:
        close(ex, order, "filled", "filled")
    elif p.stop == "self_trade":
        close(ex, order, "cancelled", "self_trade")
    elif p.stop == "budget_spent" or (order.quote_quantity is not None and order.hold == 0):
        # Nothing bought at all is not a fill: the budget could not pay for one lot.
        close(ex, order, "filled" if order.filled else "expired", "budget_spent")
    elif order.order_type == "market":
        close(ex, order, "expired", "no_liquidity")
    elif order.time_in_force != "GTC":
        close(ex, order, "expired", "time_in_force")
    else:
        ex.emit(
            {
                "type": "OrderBooked",
                "order_id": order.order_id,
                "market": order.market,
                "side": order.side,
                "price": order.price,
                "remaining": order.remaining,
            }
        )


def trade(ex: Exchange, market: Market, maker: Order, taker: Order, lots: int) -> None:
    base_amount = market.base_units(lots)
    quote_amount = market.cost(maker.price, lots)  # type: ignore[arg-type]
    t, m = taker.user_id, maker.user_id
    base, quote = market.base, market.quote
    if taker.side == BUY:
        taker_fee, taker_fee_asset = fee(base_amount, market.taker_fee_rate), base
        maker_fee, maker_fee_asset = fee(quote_amount, market.maker_fee_rate), quote
        taker_used = quote_amount if taker.price is None else market.cost(taker.price, lots)
        maker_used = base_amount
        postings = _trade_postings(
            t, m, quote, base, taker_used - quote_amount, -taker_used, base_amount - taker_fee,
            -base_amount, quote_amount - maker_fee, taker_fee, maker_fee,
        )
    else:
        taker_fee, taker_fee_asset = fee(quote_amount, market.taker_fee_rate), quote
        maker_fee, maker_fee_asset = fee(base_amount, market.maker_fee_rate), base
        taker_used, maker_used = base_amount, quote_amount
        postings = _trade_postings(
            t, m, base, quote, 0, -base_amount, quote_amount - taker_fee,
            -quote_amount, base_amount - maker_fee, taker_fee, maker_fee,
        )
    ex.emit(
        {
            "type": "TradeExecuted",
            "trade_id": ex.next_trade_id,
            "market": market.symbol,
            "price": maker.price,
            "quantity": lots,
            "base_amount": base_amount,
            "quote_amount": quote_amount,
            "taker_side": taker.side,
            "maker_order_id": maker.order_id,
            "maker_user_id": m,
            "taker_order_id": taker.order_id,
            "taker_user_id": t,
            "maker_fee": maker_fee,
            "maker_fee_asset": maker_fee_asset,
            "taker_fee": taker_fee,
            "taker_fee_asset": taker_fee_asset,
            "maker_hold_used": maker_used,
            "taker_hold_used": taker_used,
            "postings": postings,
        }
    )


def _trade_postings(
    t: str,
    m: str,
    paid: str,
    got: str,
    t_paid_available: int,
    t_paid_frozen: int,
    t_got: int,
    m_gave_frozen: int,
    m_got: int,
    taker_fee: int,
    maker_fee: int,
) -> list[list[object]]:
    """A trade's postings, exactly ``merge_postings`` of its six rows: the taker's change in the
    asset it pays (``paid``) and in the one it gets (``got``), the maker's frozen ``got`` given
    and its ``paid`` credited, the two fees to ``@fees``. When the three accounts differ and so do
    the assets (always: a taker never trades with its own order, a market's base is not its
    quote) each row has its own key, so merging keeps the rows as they are, in order, less those
    that are zero; otherwise they are merged."""
    if t in (m, FEES) or m == FEES or paid == got:
        return merge_postings(
            (t, paid, t_paid_available, t_paid_frozen),
            (t, got, t_got, 0),
            (m, got, 0, m_gave_frozen),
            (m, paid, m_got, 0),
            (FEES, got, taker_fee, 0),
            (FEES, paid, maker_fee, 0),
        )
    out: list[list[object]] = []
    if t_paid_available or t_paid_frozen:
        out.append([t, paid, t_paid_available, t_paid_frozen])
    if t_got:
        out.append([t, got, t_got, 0])
    if m_gave_frozen:
        out.append([m, got, 0, m_gave_frozen])
    if m_got:
        out.append([m, paid, m_got, 0])
    if taker_fee:
        out.append([FEES, got, taker_fee, 0])
    if maker_fee:
        out.append([FEES, paid, maker_fee, 0])
    return out


def close(ex: Exchange, order: Order, status: str, reason: str) -> None:
    released = order.hold
    ex.emit(
        {
            "type": "OrderClosed",
            "order_id": order.order_id,
            "user_id": order.user_id,
            "market": order.market,
            "status": status,
            "reason": reason,
            "released": released,
            "postings": one_posting(order.user_id, order.hold_asset, released, -released),
        }
    )


def own_open_order(ex: Exchange, req: RequestRecord) -> Order:
    user_id = ex.require_actor(req)
    order = ex.orders.get(str(req.command["order_id"]))
    if order is None or order.user_id != user_id:
        raise Reject("unknown_order", "no open order with that id belongs to you")
    return order


def cancel_order(ex: Exchange, req: RequestRecord) -> None:
    close(ex, own_open_order(ex, req), "cancelled", "user")


def cancel_all_orders(ex: Exchange, req: RequestRecord) -> None:
    user_id = ex.require_actor(req)
    symbol = req.command.get("market")
    if symbol is not None:
        ex.market(symbol)
    for oid in list(ex.user_orders.get(user_id, ())):
        order = ex.orders[oid]
        if symbol is None or order.market == symbol:
            close(ex, order, "cancelled", "user")


def amend_order(ex: Exchange, req: RequestRecord) -> None:
    cmd = req.command
    order = own_open_order(ex, req)
    market = ex.markets[order.market]
    if ex.status.get(market.symbol) != TRADING:
        raise Reject("market_not_trading", f"{market.symbol} is {ex.status.get(market.symbol)}")
    assert order.price is not None and order.quantity is not None
    try:
        price = order.price if cmd.get("price") is None else price_ticks(market, cmd["price"])
        quantity = (
            order.quantity if cmd.get("quantity") is None else quantity_lots(market, cmd["quantity"])
        )
    except AmountError as exc:
        code = "invalid_price" if "price" in str(exc) else "invalid_quantity"
        raise Reject(code, str(exc)) from None
    if quantity <= order.filled:
        raise Reject("invalid_quantity", "the new quantity must exceed what is already filled")
    if market.cost(price, quantity) < market.min_notional_units:
        raise Reject("min_notional", f"order value is below {market.min_notional} {market.quote}")
    remaining = quantity - order.filled
    kept = price == order.price and quantity <= order.quantity
    if not kept and order.post_only and ex.books[market.symbol].would_take(order.side, price):
        raise Reject("would_take", "a post-only order would have taken liquidity")
    hold = market.cost(price, remaining) if order.side == BUY else market.base_units(remaining)
    delta = hold - order.hold
    available = ex.ledger.available(order.user_id, order.hold_asset)
    if delta > available:
        raise Reject("insufficient_funds", f"needs {delta} more {order.hold_asset} units")
    ex.emit(
        {
            "type": "OrderAmended",
            "order_id": order.order_id,
            "user_id": order.user_id,
            "market": market.symbol,
            "price": price,
            "quantity": quantity,
            "priority": "kept" if kept else "lost",
            "hold": hold,
            "postings": one_posting(order.user_id, order.hold_asset, -delta, delta),
        }
    )
    if not kept:
        take(ex, market, order)
