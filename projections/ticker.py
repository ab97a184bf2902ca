"""ticker: last price and the 24 h statistics of each market.

The 24 h window is the 1,440 one-minute buckets ending with the minute of the market's latest
trade (by time), so the stored ticker is a pure function of the log; ``queries.ticker`` can
recompute the window for another end time (``now``) from the buckets kept here. Buckets older
than the window are deleted: they can never be inside a later window, because a window only
moves forward. ``last`` is the latest trade in log order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from domain.amounts import format_units
from domain.markets import Market
from projections.base import Keyed, Projection, RequestLookup, Row, epoch_seconds, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

WINDOW_MINUTES = 1440
BUCKET = ("market", "minute", "open", "high", "low", "close", "volume", "quote_volume", "trades")
TICKER = (
    "market", "last", "last_trade_id", "time", "window_start", "open", "high", "low", "volume",
    "quote_volume", "trades", "last_str", "open_str", "high_str", "low_str", "volume_str",
    "quote_volume_str", "change_str", "change_percent", "position",
)
BIG_BUCKET = ("open", "high", "low", "close", "volume", "quote_volume")
BIG_TICKER = ("last", "open", "high", "low", "volume", "quote_volume")


def window_stats(buckets: Sequence[Row]) -> dict[str, Any]:
    """open/high/low/volumes/trades over buckets sorted by minute (empty: no trades)."""
    if not buckets:
        return {"open": None, "high": None, "low": None, "volume": 0, "quote_volume": 0, "trades": 0}
    return {
        "open": buckets[0]["open"],
        "high": max(b["high"] for b in buckets),
        "low": min(b["low"] for b in buckets),
        "volume": sum(b["volume"] for b in buckets),
        "quote_volume": sum(b["quote_volume"] for b in buckets),
        "trades": sum(b["trades"] for b in buckets),
    }


def render_stats(m: Market, last: int | None, stats: Mapping[str, Any]) -> dict[str, str | None]:
    def price(v: int | None) -> str | None:
        return None if v is None else m.format_price(v)

    change = pct = None
    if last is not None and stats["open"]:
        change = m.format_price(last - stats["open"])
        pct = str((Decimal(100 * (last - stats["open"])) / Decimal(stats["open"])).quantize(
            Decimal("0.01"), ROUND_HALF_EVEN))
    return {
        "last_str": price(last), "open_str": price(stats["open"]), "high_str": price(stats["high"]),
        "low_str": price(stats["low"]), "volume_str": m.format_quantity(stats["volume"]),
        "quote_volume_str": format_units(stats["quote_volume"], m.quote_precision),
        "change_str": change, "change_percent": pct,
    }


class Ticker(Projection):
    name = "ticker"
    rebuild_cost = 3
    interest = words("TradeExecuted")
    tables = {"tickers": ("market",), "ticker_buckets": ("market", "minute")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.buckets = Keyed(self.t["ticker_buckets"], ("market", "minute"), BUCKET, BIG_BUCKET,
                             complete=True)
        self.tickers = Keyed(self.t["tickers"], ("market",), TICKER, BIG_TICKER, complete=True)
        self.minutes: dict[str, set[int]] | None = None
        self.touched: set[str] = set()

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        self.buckets.load(tx)
        self.tickers.load(tx)
        if self.minutes is None:
            self.minutes = {}
            for b in self.buckets.rows():
                self.minutes.setdefault(b["market"], set()).add(b["minute"])

    def apply(self, o: DecodedOutcome) -> None:
        assert self.minutes is not None
        for f in o.facts:
            kind = f["type"]
            if kind == "MarketListed":
                self.listing(f)
                self.tickers.put({**dict.fromkeys(TICKER), "market": f["symbol"], "volume": 0,
                                  "quote_volume": 0, "trades": 0, "volume_str": "0",
                                  "quote_volume_str": "0", "position": o.position})
                self.touched.add(f["symbol"])
                continue
            if kind != "TradeExecuted":
                self.listing(f)
                continue
            market, price = f["market"], f["price"]
            t = epoch_seconds(o.time)
            minute = t - t % 60
            b = self.buckets.get((market, minute))
            if b is None:
                b = {"market": market, "minute": minute, "open": price, "high": price,
                     "low": price, "close": price, "volume": 0, "quote_volume": 0, "trades": 0}
                self.minutes.setdefault(market, set()).add(minute)
            b["high"], b["low"], b["close"] = max(b["high"], price), min(b["low"], price), price
            b["volume"] += f["quantity"]
            b["quote_volume"] += f["quote_amount"]
            b["trades"] += 1
            self.buckets.put(b)
            row = self.tickers.get((market,))
            if row is None:
                raise LookupError(f"trade in unlisted market {market!r}")
            row.update(last=price, last_trade_id=f["trade_id"], time=o.time, position=o.position)
            self.touched.add(market)

    def _recompute(self, market: str) -> None:
        assert self.minutes is not None
        row = self.tickers.get((market,))
        assert row is not None
        minutes = self.minutes.get(market, set())
        if minutes:
            start = max(minutes) - (WINDOW_MINUTES - 1) * 60
            for old in [x for x in minutes if x < start]:
                self.buckets.delete((market, old))
                minutes.discard(old)
            row["window_start"] = start
        inside = [self.buckets.get((market, x)) for x in sorted(minutes)]
        stats = window_stats([b for b in inside if b is not None])
        row.update(stats)
        row.update(render_stats(self.catalog.markets[market], row["last"], stats))
        self.tickers.put(row)

    def flush(self, tx: Tx) -> None:
        for market in sorted(self.touched):
            self._recompute(market)
        self.touched.clear()
        self.buckets.flush(tx)
        self.tickers.flush(tx)
