"""assets and markets: what is listed, on which tick, lot and fees, and each market's status.

Invariant: a market's status is that of its latest ``MarketStatusChanged`` (``trading`` when
listed). The decimal strings are those the listing recorded.
"""

from __future__ import annotations

from collections.abc import Mapping

from projections.base import Appends, Keyed, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

MARKET_COLUMNS = (
    "symbol", "base", "quote", "tick_size", "lot_size", "min_notional", "maker_fee", "taker_fee",
    "status", "listed_at", "updated_at", "position",
)


class Markets(Projection):
    name = "markets"
    rebuild_cost = 1
    interest = words("AssetListed", "MarketListed", "MarketStatusChanged", listings=False)
    tables = {"assets": ("symbol",), "markets": ("symbol",)}

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.assets = Appends(self.t["assets"], ("symbol", "asset_precision", "listed_at", "position"))
        self.markets = Keyed(self.t["markets"], ("symbol",), MARKET_COLUMNS, complete=True)

    def begin(self, tx: Tx, events: object) -> None:
        self.markets.load(tx)

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            kind = f["type"]
            if kind == "AssetListed":
                self.assets.add(f["symbol"], f["precision"], o.time, o.position)
            elif kind == "MarketListed":
                row = {c: f[c] for c in MARKET_COLUMNS[:8]}
                row.update(status="trading", listed_at=o.time, updated_at=o.time, position=o.position)
                self.markets.put(row)
            elif kind == "MarketStatusChanged":
                listed = self.markets.get((f["market"],))
                if listed is None:
                    raise LookupError(f"status change of unlisted market {f['market']!r}")
                self.markets.put(
                    {**listed, "status": f["status"], "updated_at": o.time, "position": o.position}
                )

    def flush(self, tx: Tx) -> None:
        self.assets.flush(tx)
        self.markets.flush(tx)
