"""candles: open, high, low, close, volumes and trade count per market and period.

Buckets are aligned to UTC epoch multiples of the period (a day starts at 00:00 UTC); a trade's
time is its outcome's time (the request's time, assigned by the api). ``open`` and ``close``
are the first and last trade of the bucket in log order — the log, not the clock, orders
trades, so a rebuild gives the same candles even if api clocks disagreed slightly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from domain.amounts import format_units
from projections.base import Keyed, Projection, RequestLookup, Row, epoch_seconds, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

PERIODS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400}
COLUMNS = (
    "market", "period", "open_time", "open", "high", "low", "close", "volume", "quote_volume",
    "trades", "open_str", "high_str", "low_str", "close_str", "volume_str", "quote_volume_str",
)
BIG = ("open", "high", "low", "close", "volume", "quote_volume")


class Candles(Projection):
    name = "candles"
    rebuild_cost = 4
    interest = words("TradeExecuted")
    tables = {"candles": ("market", "period", "open_time")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Keyed(self.t["candles"], ("market", "period", "open_time"), COLUMNS, BIG,
                          render=self.render, max_cached=50_000)

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        if self.rows.in_memory:
            return
        for o in events:
            t: int | None = None
            for f in o.facts:
                if f["type"] == "TradeExecuted":
                    if t is None:
                        t = epoch_seconds(o.time)
                    for period, seconds in PERIODS.items():
                        self.rows.want((f["market"], period, t - t % seconds))
        self.rows.load(tx)

    def apply(self, o: DecodedOutcome) -> None:
        t: int | None = None
        for f in o.facts:
            if f["type"] != "TradeExecuted":
                self.listing(f)
                continue
            if t is None:
                t = epoch_seconds(o.time)
            market, price, lots, quote = f["market"], f["price"], f["quantity"], f["quote_amount"]
            for period, seconds in PERIODS.items():
                key = (market, period, t - t % seconds)
                row = self.rows.get(key)
                if row is None:
                    row = {"market": market, "period": period, "open_time": key[2], "open": price,
                           "high": price, "low": price, "close": price, "volume": lots,
                           "quote_volume": quote, "trades": 1}
                else:
                    row["high"] = max(row["high"], price)
                    row["low"] = min(row["low"], price)
                    row["close"] = price
                    row["volume"] += lots
                    row["quote_volume"] += quote
                    row["trades"] += 1
                self.rows.put(row, key)

    def render(self, row: Row) -> None:
        m = self.catalog.formats[row["market"]]
        for c in ("open", "high", "low", "close"):
            row[f"{c}_str"] = m.price(row[c])
        row["volume_str"] = m.market.format_quantity(row["volume"])
        row["quote_volume_str"] = format_units(row["quote_volume"], m.market.quote_precision)

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
