"""fills: one row per side of every trade, with its liquidity (maker or taker) and fee.

Invariant: each ``TradeExecuted`` gives exactly two rows, keyed (trade_id, liquidity); the maker
side is the opposite of the taker's and both fill at the trade (maker's) price.
"""

from __future__ import annotations

from collections.abc import Mapping

from projections.base import Appends, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "trade_id", "liquidity", "order_id", "user_id", "market", "side", "price", "quantity",
    "quote_quantity", "fee", "price_str", "quantity_str", "quote_quantity_str", "fee_str",
    "fee_asset", "time", "position",
)


class Fills(Projection):
    name = "fills"
    rebuild_cost = 7
    interest = words("TradeExecuted")
    tables = {"fills": ("trade_id", "liquidity")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(self.t["fills"], COLUMNS, ("price", "quantity", "quote_quantity", "fee"))

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            if f["type"] != "TradeExecuted":
                self.listing(f)
                continue
            formats = self.catalog.formats[f["market"]]
            price, lots, quote = f["price"], f["quantity"], f["quote_amount"]
            price_s = formats.price(price)
            lots_s = formats.quantity(lots)
            quote_s = formats.quote(quote)
            taker_side = f["taker_side"]
            maker_side = "sell" if taker_side == "buy" else "buy"
            for role, side in (("maker", maker_side), ("taker", taker_side)):
                fee, fee_asset = f[f"{role}_fee"], f[f"{role}_fee_asset"]
                self.rows.add(
                    f["trade_id"], role, f[f"{role}_order_id"], f[f"{role}_user_id"], f["market"],
                    side, price, lots, quote, fee, price_s, lots_s, quote_s,
                    self.catalog.units(fee_asset, fee), fee_asset, o.time, o.position,
                )

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
