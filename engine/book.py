"""The order book of one market: price levels in sorted order, FIFO queues within a level.

The book never touches money. It only keeps resting orders in price-time priority and answers
"which makers would a taker meet, best first". Prices and quantities are integer ticks and lots.
Both sides are ``SortedDict``s keyed so that the best price comes first (asks by ticks, bids by
minus ticks), so adding, removing and finding the best level cost O(log levels) and a cancel
is O(1) inside its level (an ``OrderedDict`` keyed by order id).

Invariants: a level's ``total`` is the sum of its orders' remaining lots; no level is empty;
the book is never crossed (best bid < best ask) between requests.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from sortedcontainers import SortedDict

from domain.ledger import Violation
from domain.orders import BUY, Order


class Level:
    __slots__ = ("orders", "total")

    def __init__(self) -> None:
        self.orders: OrderedDict[str, Order] = OrderedDict()
        self.total = 0


class Book:
    __slots__ = ("asks", "bids", "symbol")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: SortedDict = SortedDict()  # -ticks → Level
        self.asks: SortedDict = SortedDict()  # ticks → Level

    def _side(self, side: str) -> tuple[SortedDict, int]:
        return (self.bids, -1) if side == BUY else (self.asks, 1)

    def add(self, order: Order) -> None:
        """Rest an order at the back of its price level."""
        if order.side == BUY:
            levels, key = self.bids, -order.price  # type: ignore[operator]
        else:
            levels, key = self.asks, order.price
        level = levels.get(key)
        if level is None:
            level = levels[key] = Level()
        level.orders[order.order_id] = order
        level.total += order.remaining
        order.booked = True

    def remove(self, order: Order) -> None:
        if order.side == BUY:
            levels, key = self.bids, -order.price  # type: ignore[operator]
        else:
            levels, key = self.asks, order.price
        level = levels[key]
        orders = level.orders
        del orders[order.order_id]
        level.total -= order.remaining
        if not orders:
            del levels[key]
        order.booked = False

    def reduce(self, order: Order, lots: int) -> None:
        """Take ``lots`` off a resting order in place (a fill or a quantity reduction)."""
        if order.side == BUY:
            levels, key = self.bids, -order.price  # type: ignore[operator]
        else:
            levels, key = self.asks, order.price
        level = levels[key]
        level.total -= lots
        order.remaining -= lots
        if order.remaining == 0:
            orders = level.orders
            del orders[order.order_id]
            if not orders:
                del levels[key]
            order.booked = False

    def makers(self, taker_side: str, limit: int | None) -> Iterator[Order]:
        """Resting orders a taker on ``taker_side`` would meet, best first, up to ``limit``."""
        if taker_side == BUY:
            levels = self.asks
            bound = limit
        else:
            levels = self.bids
            bound = None if limit is None else -limit
        for key in levels:  # keys in sorted order; a plain lookup is cheaper than items()
            if bound is not None and key > bound:
                return
            yield from levels[key].orders.values()

    def best_bid(self) -> int | None:
        return -self.bids.peekitem(0)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    def would_take(self, side: str, price: int) -> bool:
        if side == BUY:
            best = self.best_ask()
            return best is not None and price >= best
        best = self.best_bid()
        return best is not None and price <= best

    def depth(self, side: str, limit: int | None = None) -> list[tuple[int, int]]:
        """``[(ticks, total lots)]`` best first."""
        levels, sign = self._side(side)
        out: list[tuple[int, int]] = []
        for key, level in levels.items():
            if limit is not None and len(out) >= limit:
                break
            out.append((sign * key, level.total))
        return out

    def orders_in_priority(self) -> Iterator[Order]:
        for levels in (self.bids, self.asks):
            for level in levels.values():
                yield from level.orders.values()

    def state(self) -> dict[str, list[str]]:
        """Order ids per side in priority order: enough, with the orders, to rebuild the book."""
        return {
            side: [oid for level in levels.values() for oid in level.orders]
            for side, levels in (("bids", self.bids), ("asks", self.asks))
        }

    def check(self) -> list[Violation]:
        out = []
        bid, ask = self.best_bid(), self.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            out.append(Violation("crossed_book", self.symbol, f"best bid {bid} ≥ best ask {ask}"))
        for side, levels, sign in (("buy", self.bids, -1), ("sell", self.asks, 1)):
            for key, level in levels.items():
                if not level.orders:
                    out.append(Violation("empty_level", self.symbol, f"{side} level {key} is empty"))
                total = 0
                for order in level.orders.values():
                    total += order.remaining
                    if order.remaining <= 0 or order.side != side or sign * order.price != key:
                        out.append(
                            Violation("misplaced_order", self.symbol, f"order {order.order_id}")
                        )
                if total != level.total:
                    out.append(
                        Violation(
                            "level_total",
                            self.symbol,
                            f"{side} level {sign * key}: total {level.total} ≠ orders' {total}",
                        )
                    )
        return out
