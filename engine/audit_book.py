"""The auditor's own model of resting orders, folded from recorded facts, and the book checks.

It shares nothing with ``engine.book``: orders rest in price levels (a ``SortedDict`` per side,
bids keyed by minus ticks so the best level comes first) holding insertion-ordered dicts, so the
first order of the first level is the best-priority order of a side. It follows ``OrderAccepted``,
``OrderBooked``, ``TradeExecuted``, ``OrderAmended`` and ``OrderClosed`` and checks

- ``trade_price``: every trade executes at the maker's resting price, within the taker's limit;
- ``priority``: a trade's maker is the best-priority resting order on its side that is not the
  taker's own (a resting order of the taker is cancelled by self-trade prevention first);
- ``trade_quantity``: a trade takes no more than the maker rests and the taker still wants;
- ``book_state``: a booked order rests at its own price with its unfilled quantity and is not
  resting already; a trade's maker rests and its taker does not; a market order never rests;
- ``unknown_order``: a fact names an order that was never accepted or is closed;
- ``order_unresolved``: an order accepted (or re-placed by an amend that lost priority) rests
  or is closed by the end of its outcome;
- ``crossed_book``: after every outcome, each touched market's best bid is below its best ask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedDict

Fact = dict[str, Any]
Problem = tuple[str, str]


class _Order:
    __slots__ = ("filled", "market", "order_id", "price", "quantity", "resting", "side", "user_id")

    def __init__(self, f: Fact) -> None:
        self.order_id: str = f["order_id"]
        self.user_id: str = f["user_id"]
        self.market: str = f["market"]
        self.side: str = f["side"]
        self.price: int | None = f["price"]
        self.quantity: int | None = f["quantity"]
        self.filled = 0
        self.resting = False

    @property
    def remaining(self) -> int | None:
        return None if self.quantity is None else self.quantity - self.filled


class BookCheck:
    """Resting orders per market and side; see the module docstring for what it checks."""

    def __init__(self) -> None:
        self.orders: dict[str, _Order] = {}
        self.sides: dict[tuple[str, str], SortedDict] = {}  # (market, side) → key → {oid: None}
        self._touched: set[str] = set()
        self._placed: dict[str, None] = {}

    def outcome(self, facts: list[Fact]) -> list[Problem]:
        out: list[Problem] = []
        self._touched, self._placed = set(), {}
        for f in facts:
            rule = _RULES.get(f.get("type"))  # type: ignore[arg-type]
            if rule is None:
                continue
            try:
                rule(self, f, out)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                out.append(
                    ("malformed_fact", f"{f.get('type')!r} fact cannot be applied to the book: {exc!r}")
                )
        for oid in self._placed:
            order = self.orders.get(oid)
            if order is not None and not order.resting:
                out.append(("order_unresolved", f"order {oid} neither rests nor is closed after its outcome"))
        sides = self.sides
        for market in sorted(self._touched):
            # a level's key is its orders' price (bids: minus it), so the best prices are the keys
            bids, asks = sides.get((market, "buy")), sides.get((market, "sell"))
            if bids and asks:
                bid, ask = -bids.peekitem(0)[0], asks.peekitem(0)[0]
                if bid >= ask:
                    out.append(("crossed_book", f"{market}: best bid {bid} ≥ best ask {ask} (ticks)"))
        return out

    # -- the model ----------------------------------------------------------------------------

    def _levels(self, market: str, side: str) -> SortedDict:
        levels = self.sides.get((market, side))
        if levels is None:
            levels = self.sides[(market, side)] = SortedDict()
        return levels

    def _rest(self, order: _Order) -> None:
        key = -order.price if order.side == "buy" else order.price  # type: ignore[operator]
        levels = self._levels(order.market, order.side)
        level = levels.get(key)
        if level is None:
            level = levels[key] = {}
        level[order.order_id] = None
        order.resting = True
        self._touched.add(order.market)

    def _unrest(self, order: _Order) -> None:
        if not order.resting:
            return
        key = -order.price if order.side == "buy" else order.price  # type: ignore[operator]
        levels = self._levels(order.market, order.side)
        level = levels[key]
        del level[order.order_id]
        if not level:
            del levels[key]
        order.resting = False

    def in_priority(self, market: str, side: str) -> Iterator[_Order]:
        """Resting orders of one side, best first."""
        for level in self._levels(market, side).values():
            for oid in level:
                yield self.orders[oid]

    def best(self, market: str, side: str) -> _Order | None:
        levels = self.sides.get((market, side))
        if not levels:
            return None
        return self.orders[next(iter(levels.peekitem(0)[1]))]

    def _order(self, oid: str, out: list[Problem], what: str) -> _Order | None:
        order = self.orders.get(oid)
        if order is None:
            out.append(("unknown_order", f"{what} names order {oid}, which is not open"))
        return order


# -- the rules per fact type ----------------------------------------------------------------


def _accepted(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    bc.orders[f["order_id"]] = _Order(f)
    bc._placed[f["order_id"]] = None


def _booked(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    order = bc._order(f["order_id"], out, "OrderBooked")
    if order is None:
        return
    if order.resting or order.quantity is None or order.price is None:
        out.append(("book_state", f"order {order.order_id} cannot be booked: resting already or no limit"))
        return
    if (f["price"], f["remaining"], f["side"], f["market"]) != (
        order.price,
        order.remaining,
        order.side,
        order.market,
    ):
        out.append(
            (
                "book_state",
                f"order {order.order_id} booked at {f['price']} ticks with {f['remaining']} lots; "
                f"it is at {order.price} with {order.remaining} unfilled",
            )
        )
    bc._rest(order)


def _trade(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    tid = f["trade_id"]
    maker = bc._order(f["maker_order_id"], out, f"trade {tid}")
    taker = bc._order(f["taker_order_id"], out, f"trade {tid}")
    if maker is None or taker is None:
        return
    lots, price = f["quantity"], f["price"]
    if not maker.resting or taker.resting or maker.side == taker.side or maker.market != f["market"]:
        out.append(("book_state", f"trade {tid}: the maker must rest in {f['market']}, the taker must not"))
    else:
        best = next((o for o in bc.in_priority(maker.market, maker.side) if o.user_id != taker.user_id), None)
        if best is None or best.order_id != maker.order_id:
            who = best.order_id if best is not None else "nothing"
            out.append(("priority", f"trade {tid}: maker {maker.order_id}, but {who} has priority"))
    if price != maker.price:
        out.append(("trade_price", f"trade {tid} at {price} ticks, the maker rests at {maker.price}"))
    if taker.price is not None and (price > taker.price if taker.side == "buy" else price < taker.price):
        out.append(("trade_price", f"trade {tid} at {price} ticks is beyond the taker's limit {taker.price}"))
    if lots <= 0 or lots > (maker.remaining or 0) or (taker.quantity is not None and lots > taker.remaining):
        out.append(
            (
                "trade_quantity",
                f"trade {tid} of {lots} lots: maker has {maker.remaining}, taker wants {taker.remaining}",
            )
        )
    maker.filled += lots
    taker.filled += lots
    if maker.resting and maker.remaining is not None and maker.remaining <= 0:
        bc._unrest(maker)
    bc._touched.add(maker.market)


def _amended(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    order = bc._order(f["order_id"], out, "OrderAmended")
    if order is None:
        return
    if f["priority"] == "lost":
        bc._unrest(order)
        order.price = f["price"]
        bc._placed[order.order_id] = None
    elif f["price"] != order.price or f["quantity"] > (order.quantity or 0):
        out.append(("priority", f"order {order.order_id} kept its priority but changed price or grew"))
    order.quantity = f["quantity"]
    if order.resting and order.remaining is not None and order.remaining <= 0:
        out.append(("book_state", f"order {order.order_id} amended to nothing left while resting"))
        bc._unrest(order)
    bc._touched.add(order.market)


def _closed(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    order = bc._order(f["order_id"], out, "OrderClosed")
    if order is None:
        return
    bc._unrest(order)
    del bc.orders[order.order_id]
    bc._placed.pop(order.order_id, None)
    bc._touched.add(order.market)


_RULES = {
    "OrderAccepted": _accepted,
    "OrderBooked": _booked,
    "TradeExecuted": _trade,
    "OrderAmended": _amended,
    "OrderClosed": _closed,
}
