"""trades: the public tape per market — price, quantity and taker side of every trade."""

from __future__ import annotations

from collections.abc import Mapping

from projections.base import Appends, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "trade_id", "market", "price", "quantity", "quote_quantity", "price_str", "quantity_str",
    "quote_quantity_str", "taker_side", "time", "position",
)


class Trades(Projection):
    name = "trades"
    rebuild_cost = 4
    interest = words("TradeExecuted")
    tables = {"trades": ("trade_id",)}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(self.t["trades"], COLUMNS, ("price", "quantity", "quote_quantity"))

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            if f["type"] != "TradeExecuted":
                self.listing(f)
                continue
            m = self.catalog.formats[f["market"]]
            self.rows.add(
                f["trade_id"], f["market"], f["price"], f["quantity"], f["quote_amount"],
                m.price(f["price"]), m.quantity(f["quantity"]), m.quote(f["quote_amount"]),
                f["taker_side"], o.time, o.position,
            )

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
