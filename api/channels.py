"""The public WebSocket channels of one market — ``book``, ``trades``, ``candles``, ``ticker`` —
each as its state as last sent and a ``poll`` of what changed in the read model since.

Each channel keeps what a new subscriber's snapshot needs (the whole book at its sequence, the
latest trades and candles, the ticker) and turns the read model's changes into update messages,
encoded once for all subscribers (``Outbound``: the JSON text and the WebSocket frame carrying it).
``api.streams.Hub`` drives them; they are not thread-safe.

Invariant (``book``): the in-memory book is the read model's book at ``sequence``; updates are
applied in sequence order and a jump in the change log reloads the channel (a new snapshot).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.frames import Frame, Opcode

from api.schemas import Candle, Ticker, Trade
from projections import queries as q
from projections.base import epoch_seconds
from projections.candles import PERIODS

log = logging.getLogger("spotex.ws")

# ("book", market) · ("trades", market) · ("ticker", market) · ("candles", market, interval)
Key = tuple[str, ...]
BOOK_DEPTH = 5000  # the most levels per side a snapshot carries (queries.book's cap)
RECENT = 100  # trades and candles a snapshot carries
MAX_PAGES_PER_TICK = 20


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class Outbound:
    """One message to clients, encoded once however many connections get it.

    ``text`` is the JSON text; ``frame`` the complete WebSocket text frame carrying it as a server
    sends it (RFC 6455 §5.2: FIN, opcode text, unmasked, no extension); ``size`` its length, which
    a connection's queue bound counts. A connection sends either (``api.routers.ws``); the bytes
    on the wire are the same.
    """

    __slots__ = ("frame", "size", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
        self.size = len(self.frame)

    def __repr__(self) -> str:
        return f"Outbound({self.text[:60]!r})"


def encode(body: dict[str, Any]) -> Outbound:
    """``body`` serialised and framed, once for every connection that gets it."""
    return Outbound(dumps(body))


class UnknownMarket(LookupError):
    pass


class Channel:
    """A public channel of one market: its state as last sent, and what changed since."""

    deps: tuple[str, ...] = ()

    def __init__(self, key: Key) -> None:
        self.key = key
        self.market = key[1]
        self.seen: tuple[int, ...] | None = None
        self.broken = False  # a poll failed part-way: reload and send everyone a snapshot
        self._snapshot: Outbound | None = None

    def load(self, store: Any) -> None:
        raise NotImplementedError

    def snapshot_message(self) -> dict[str, Any]:
        raise NotImplementedError

    def poll(self, store: Any) -> list[Outbound]:
        raise NotImplementedError

    def snapshot(self) -> Outbound:
        """The snapshot message, encoded once until the channel changes."""
        if self._snapshot is None:
            self._snapshot = encode(self.snapshot_message())
        return self._snapshot

    def changed(self) -> None:
        self._snapshot = None


class BookChannel(Channel):
    deps = ("book",)

    def load(self, store: Any) -> None:
        book = q.book(store, self.market, depth=BOOK_DEPTH)
        if book is None:
            raise UnknownMarket(self.market)
        self.sequence, self.position = book["sequence"], book["position"]
        self.sides: dict[str, dict[str, str]] = {
            "bids": {p: qty for p, qty in book["bids"]},
            "asks": {p: qty for p, qty in book["asks"]},
        }
        self.changed()

    def snapshot_message(self) -> dict[str, Any]:
        bids = sorted(self.sides["bids"].items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.sides["asks"].items(), key=lambda kv: Decimal(kv[0]))
        return {"type": "snapshot", "channel": "book", "market": self.market, "sequence": self.sequence,
                "position": self.position, "bids": [list(b) for b in bids], "asks": [list(a) for a in asks]}

    def poll(self, store: Any) -> list[Outbound]:
        out: list[Outbound] = []
        for _ in range(MAX_PAGES_PER_TICK):
            updates = q.book_updates(store, self.market, after_sequence=self.sequence, limit=1000)
            if not updates:
                break
            if updates[0]["sequence"] != self.sequence + 1:
                log.warning("book %s: change log jumps from %s to %s; sending a new snapshot",
                            self.market, self.sequence, updates[0]["sequence"])
                self.load(store)
                return [self.snapshot()]
            for u in updates:
                for side in ("bids", "asks"):
                    levels = self.sides[side]
                    for price, qty in u[side]:
                        if Decimal(qty) == 0:
                            levels.pop(price, None)
                        else:
                            levels[price] = qty
                self.sequence, self.position = u["sequence"], u["position"]
                out.append(encode({"type": "update", "channel": "book", "market": self.market,
                                  "sequence": u["sequence"], "position": u["position"],
                                  "bids": u["bids"], "asks": u["asks"]}))
            self.changed()
            if len(updates) < 1000:
                break
        return out


class TradesChannel(Channel):
    deps = ("trades",)

    def load(self, store: Any) -> None:
        if q.market(store, self.market) is None:
            raise UnknownMarket(self.market)
        rows = q.trades(store, self.market, limit=RECENT)["data"]
        self.recent: deque[dict[str, Any]] = deque((public(Trade, r) for r in reversed(rows)), RECENT)
        self.last_id = rows[0]["trade_id"] if rows else 0
        self.changed()

    def snapshot_message(self) -> dict[str, Any]:
        return {"type": "snapshot", "channel": "trades", "market": self.market, "trades": list(self.recent)}

    def poll(self, store: Any) -> list[Outbound]:
        fresh: list[dict[str, Any]] = []
        cursor = None
        for _ in range(MAX_PAGES_PER_TICK):  # newest first, back to the last trade sent
            page = q.trades(store, self.market, limit=1000, cursor=cursor)
            rows = [r for r in page["data"] if r["trade_id"] > self.last_id]
            fresh.extend(rows)
            cursor = page["next_cursor"]
            if len(rows) < len(page["data"]) or cursor is None:
                break
        if not fresh:
            return []
        fresh.sort(key=lambda r: r["trade_id"])
        self.last_id = fresh[-1]["trade_id"]
        trades = [public(Trade, r) for r in fresh]
        self.recent.extend(trades)
        self.changed()
        return [encode({"type": "update", "channel": "trades", "market": self.market, "trades": trades})]


class CandlesChannel(Channel):
    deps = ("candles",)

    def __init__(self, key: Key) -> None:
        super().__init__(key)
        self.interval = key[2]
        self.seconds = PERIODS[self.interval]

    def load(self, store: Any) -> None:
        if q.market(store, self.market) is None:
            raise UnknownMarket(self.market)
        rows = q.candles(store, self.market, self.interval, limit=RECENT)
        self.candles: dict[str, dict[str, Any]] = {r["open_time"]: public(Candle, r) for r in rows}
        self.changed()

    def snapshot_message(self) -> dict[str, Any]:
        return {"type": "snapshot", "channel": "candles", "market": self.market, "interval": self.interval,
                "candles": [self.candles[t] for t in sorted(self.candles, key=_epoch)]}

    def poll(self, store: Any) -> list[Outbound]:
        # Outcome times are request times, so a late outcome can still land in the bucket
        # before the latest one: look one bucket back.
        start = max((_epoch(t) for t in self.candles), default=0) - self.seconds
        rows = q.candles(store, self.market, self.interval, start=max(start, 0), limit=1000)
        changed = []
        for row in rows:
            candle = public(Candle, row)
            if self.candles.get(candle["open_time"]) != candle:
                self.candles[candle["open_time"]] = candle
                changed.append(candle)
        if not changed:
            return []
        for t in sorted(self.candles, key=_epoch)[:-RECENT]:
            del self.candles[t]
        self.changed()
        return [encode({"type": "update", "channel": "candles", "market": self.market,
                       "interval": self.interval, "candles": changed})]


class TickerChannel(Channel):
    deps = ("ticker", "book")  # best bid and ask come from the book

    def load(self, store: Any) -> None:
        row = q.ticker(store, self.market)
        if row is None:
            raise UnknownMarket(self.market)
        self.ticker = public(Ticker, row)
        self.changed()

    def snapshot_message(self) -> dict[str, Any]:
        return {"type": "snapshot", "channel": "ticker", "market": self.market, "ticker": self.ticker}

    def poll(self, store: Any) -> list[Outbound]:
        row = q.ticker(store, self.market)
        if row is None:
            return []
        ticker = public(Ticker, row)
        if ticker == self.ticker:
            return []
        self.ticker = ticker
        self.changed()
        return [encode({"type": "update", "channel": "ticker", "market": self.market, "ticker": ticker})]


CHANNELS: dict[str, Callable[[Key], Channel]] = {
    "book": BookChannel, "trades": TradesChannel, "candles": CandlesChannel, "ticker": TickerChannel,
}


def public(model: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The row in the REST response's shape (the same pydantic model filters both)."""
    dumped: dict[str, Any] = model.model_validate(row).model_dump()
    return dumped


def _epoch(iso: str) -> int:
    return epoch_seconds(iso)
