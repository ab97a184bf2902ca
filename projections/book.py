"""book: depth per market (quantity summed per price level), with a gap-free change log.

Each market has a ``sequence`` that increases by exactly one for each outcome that changes its
depth; ``book_changes`` lists, per sequence, every level that changed with its new total
quantity (0 = the level is gone). A WebSocket client takes a snapshot (levels + sequence) and
applies the changes after it; a gap means resubscribe.

Invariant: a level's quantity is the sum of the ``remaining`` of the resting orders at that
price (``book_orders``), which are exactly the orders booked and not yet closed or moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from projections.base import Appends, Keyed, Projection, RequestLookup, Row, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

LEVEL = ("market", "side", "price", "quantity", "price_str", "quantity_str")
ORDER = ("order_id", "market", "side", "price", "quantity", "remaining")
CHANGE = ("market", "sequence", "side", "price", "quantity", "price_str", "quantity_str", "position")


class Book(Projection):
    name = "book"
    rebuild_cost = 14
    interest = words("OrderBooked", "TradeExecuted", "OrderAmended", "OrderClosed")
    # in the order queries read them (book(): state, then levels): the swap locks them so
    tables = {
        "book_state": ("market",),
        "book_levels": ("market", "side", "price"),
        "book_orders": ("order_id",),
        "book_changes": ("market", "sequence", "side", "price"),
    }
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.levels = Keyed(
            self.t["book_levels"], ("market", "side", "price"), LEVEL, ("price", "quantity"),
            complete=True, render=self._render_level,
        )
        self.orders = Keyed(
            self.t["book_orders"], ("order_id",), ORDER, ("price", "quantity", "remaining")
        )
        self.state = Keyed(self.t["book_state"], ("market",), ("market", "sequence", "position"),
                           complete=True)
        self.changes = Appends(self.t["book_changes"], CHANGE, ("price", "quantity"))

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        for o in () if self.orders.in_memory else events:
            for f in o.facts:
                kind = f["type"]
                if kind == "TradeExecuted":
                    self.orders.want((f["maker_order_id"],))
                elif kind in ("OrderAmended", "OrderClosed"):
                    self.orders.want((f["order_id"],))
        self.orders.load(tx)
        self.levels.load(tx)
        self.state.load(tx)

    def _adjust(self, before: dict[tuple[str, str, int], int], market: str, side: str, price: int,
                delta: int) -> None:
        key = (market, side, price)
        levels = self.levels
        row = levels.get(key)
        qty = row["quantity"] if row else 0
        if key not in before:
            before[key] = qty
        new = qty + delta
        if new < 0:
            raise ValueError(f"level {key} would go negative ({qty} {delta:+})")
        if new == 0:
            levels.delete(key)
        else:
            levels.put({"market": market, "side": side, "price": price, "quantity": new}, key)

    def apply(self, o: DecodedOutcome) -> None:
        before: dict[tuple[str, str, int], int] = {}
        totals: dict[str, int] = {}  # order id → total lots, from this outcome's facts
        adjust = self._adjust
        orders = self.orders

        for f in o.facts:
            kind = f["type"]
            if kind == "TradeExecuted":
                row = self._resting(f["maker_order_id"])
                row["remaining"] -= f["quantity"]
                orders.put(row)
                adjust(before, row["market"], row["side"], row["price"], -f["quantity"])
            elif kind == "OrderAccepted":
                totals[f["order_id"]] = f["quantity"]
            elif kind == "OrderBooked":
                oid = f["order_id"]
                orders.put({"order_id": oid, "market": f["market"], "side": f["side"],
                            "price": f["price"], "quantity": totals[oid],
                            "remaining": f["remaining"]}, (oid,))
                adjust(before, f["market"], f["side"], f["price"], f["remaining"])
            elif kind == "OrderAmended":
                totals[f["order_id"]] = f["quantity"]
                resting = orders.get((f["order_id"],))
                if resting is None:
                    continue
                if f["priority"] == "kept":
                    filled = resting["quantity"] - resting["remaining"]
                    remaining = f["quantity"] - filled
                    adjust(before, resting["market"], resting["side"], resting["price"],
                           remaining - resting["remaining"])
                    orders.put({**resting, "quantity": f["quantity"], "remaining": remaining})
                else:  # it leaves the book; an OrderBooked follows if it rests again
                    adjust(before, resting["market"], resting["side"], resting["price"],
                           -resting["remaining"])
                    orders.delete((f["order_id"],))
            elif kind == "OrderClosed":
                closing = orders.get((f["order_id"],))
                if closing is not None:
                    if closing["remaining"]:
                        adjust(before, closing["market"], closing["side"], closing["price"],
                               -closing["remaining"])
                    orders.delete((f["order_id"],))
            elif kind == "MarketListed":
                self.listing(f)
                self.state.put({"market": f["symbol"], "sequence": 0, "position": o.position})
            else:
                self.listing(f)
        if before:
            self._record(o, before)

    def _resting(self, order_id: str) -> Row:
        row = self.orders.get((order_id,))
        if row is None:
            raise LookupError(f"maker order {order_id} is not in the book")
        return row

    def _record(self, o: DecodedOutcome, before: Mapping[tuple[str, str, int], int]) -> None:
        """One sequence per market whose depth this outcome changed."""
        changed: dict[str, list[tuple[str, int, int]]] = {}
        for (market, side, price), old in before.items():
            row = self.levels.get((market, side, price))
            new = row["quantity"] if row else 0
            if new != old:
                changed.setdefault(market, []).append((side, price, new))
        for market in sorted(changed):
            state = self.state.get((market,))
            if state is None:
                raise LookupError(f"book change in unlisted market {market!r}")
            sequence = state["sequence"] + 1
            self.state.put({"market": market, "sequence": sequence, "position": o.position})
            m = self.catalog.formats[market]
            for side, price, qty in sorted(changed[market]):
                self.changes.add(market, sequence, side, price, qty,
                                 m.price(price), m.quantity(qty), o.position)

    def _render_level(self, row: Row) -> None:
        m = self.catalog.formats[row["market"]]
        row["price_str"] = m.price(row["price"])
        row["quantity_str"] = m.quantity(row["quantity"])

    def flush(self, tx: Tx) -> None:
        self.levels.flush(tx)
        self.orders.flush(tx)
        self.state.flush(tx)
        self.changes.flush(tx)
