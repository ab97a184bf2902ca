"""The auditor's own model of resting orders, folded from recorded facts, and the book checks.

It shares nothing with ``engine.book``: orders rest in price levels (a ``_Side`` per market and
side: its levels by key, bids keyed by minus ticks so the best level has the smallest key, and
the keys negated in a sorted list, so the best is the list's last item) holding
insertion-ordered dicts, so the first order of the best level is the best-priority order of a
side. It follows ``OrderAccepted``,
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

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from typing import Any

Fact = dict[str, Any]
Problem = tuple[str, str]


class _Order:
    __slots__ = ("filled", "market", "order_id", "price", "quantity", "resting", "side", "user_id")

    def __init__(
        self, order_id: str, user_id: str, market: str, side: str, price: int | None, quantity: int | None
    ) -> None:
        self.order_id, self.user_id, self.market, self.side = order_id, user_id, market, side
        self.price, self.quantity = price, quantity
        self.filled = 0
        self.resting = False

    @property
    def remaining(self) -> int | None:
        return None if self.quantity is None else self.quantity - self.filled


def _key(order: _Order) -> int:
    """Where an order rests on its side: bids by minus ticks, so the best key is the smallest."""
    price = order.price
    return -price if order.side == "buy" else price  # type: ignore[operator,return-value]


class _Side:
    """One side's levels: ``key → {order id: None}``, walked best (smallest key) first.

    ``ladder`` holds the keys negated in ascending order, so the best key is ``-ladder[-1]``:
    levels come and go mostly at the touch, the list's end, where inserting or deleting moves
    few pointers (a ``SortedDict``, pure Python, cost several µs per outcome in its peeks)."""

    __slots__ = ("by_key", "ladder")

    def __init__(self) -> None:
        self.by_key: dict[int, dict[str, None]] = {}
        self.ladder: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def best(self) -> int:
        """The best key; the side must not be empty."""
        return -self.ladder[-1]

    def values(self) -> Iterator[dict[str, None]]:
        """The levels, best first."""
        by_key = self.by_key
        return (by_key[-neg] for neg in reversed(self.ladder))

    def add(self, key: int, oid: str) -> None:
        level = self.by_key.get(key)
        if level is None:
            level = self.by_key[key] = {}
            insort(self.ladder, -key)
        level[oid] = None

    def discard(self, key: int, oid: str) -> None:
        level = self.by_key[key]
        del level[oid]
        if not level:
            del self.by_key[key]
            ladder = self.ladder
            del ladder[bisect_left(ladder, -key)]


class BookCheck:
    """Resting orders per market and side; see the module docstring for what it checks."""

    def __init__(self) -> None:
        self.orders: dict[str, _Order] = {}
        self.sides: dict[tuple[str, str], _Side] = {}  # (market, side) → its levels
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
        sides, touched = self.sides, self._touched
        for market in touched if len(touched) < 2 else sorted(touched):  # sorted: a fixed order
            # a level's key is its orders' price (bids: minus it), so the best prices are the keys
            bids, asks = sides.get((market, "buy")), sides.get((market, "sell"))
            if bids and asks:
                bid, ask = -bids.best(), asks.best()
                if bid >= ask:
                    out.append(("crossed_book", f"{market}: best bid {bid} ≥ best ask {ask} (ticks)"))
        return out

    # -- the model ----------------------------------------------------------------------------

    def _levels(self, market: str, side: str) -> _Side:
        levels = self.sides.get((market, side))
        if levels is None:
            levels = self.sides[(market, side)] = _Side()
        return levels

    def _rest(self, order: _Order) -> None:
        key = _key(order)
        self._levels(order.market, order.side).add(key, order.order_id)
        order.resting = True
        self._touched.add(order.market)

    def rest_all(self, orders: Iterable[_Order]) -> None:
        """Rest orders given in priority order per side (a stored book), sorting each side's
        keys once: resting them one by one, best first, would insert every new, worse level at
        the front of its ladder."""
        sides: set[tuple[str, str]] = set()
        for order in orders:
            key = _key(order)
            levels = self._levels(order.market, order.side)
            level = levels.by_key.get(key)
            if level is None:
                level = levels.by_key[key] = {}
            level[order.order_id] = None
            order.resting = True
            sides.add((order.market, order.side))
        for market_side in sides:
            levels = self.sides[market_side]
            levels.ladder = sorted(-key for key in levels.by_key)

    def _unrest(self, order: _Order) -> None:
        if not order.resting:
            return
        key = _key(order)
        self._levels(order.market, order.side).discard(key, order.order_id)
        order.resting = False

    def best_not_of(self, market: str, side: str, user_id: str) -> _Order | None:
        """The best-priority resting order of one side that is not ``user_id``'s."""
        levels = self.sides.get((market, side))
        if levels is None:
            return None
        orders, by_key, ladder = self.orders, levels.by_key, levels.ladder
        for i in range(len(ladder) - 1, -1, -1):
            for oid in by_key[-ladder[i]]:
                order = orders[oid]
                if order.user_id != user_id:
                    return order
        return None

    def _order(self, oid: str, out: list[Problem], what: str, of: object = "") -> _Order | None:
        """``f"{what}{of}"`` names the fact, put together only for a problem."""
        order = self.orders.get(oid)
        if order is None:
            out.append(("unknown_order", f"{what}{of} names order {oid}, which is not open"))
        return order


# -- the rules per fact type ----------------------------------------------------------------


def _accepted(bc: BookCheck, f: Fact, out: list[Problem]) -> None:
    order = _Order(f["order_id"], f["user_id"], f["market"], f["side"], f["price"], f["quantity"])
    bc.orders[order.order_id] = order
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
    maker = bc._order(f["maker_order_id"], out, "trade ", tid)
    taker = bc._order(f["taker_order_id"], out, "trade ", tid)
    if maker is None or taker is None:
        return
    lots, price = f["quantity"], f["price"]
    if not maker.resting or taker.resting or maker.side == taker.side or maker.market != f["market"]:
        out.append(("book_state", f"trade {tid}: the maker must rest in {f['market']}, the taker must not"))
    else:
        best = bc.best_not_of(maker.market, maker.side, taker.user_id)
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
