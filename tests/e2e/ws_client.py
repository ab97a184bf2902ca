"""A test client of ``/v1/ws`` (the ``websockets`` package) and mirrors that rebuild what it streams.

``WsClient`` keeps every message in arrival order; ``expect`` waits for the next one matching a
predicate. ``BookMirror`` applies book snapshots and updates the way a client must (a gap is
reported, not papered over); ``TradesMirror`` and ``CandlesMirror`` do the same for trades and
candles. Tests compare the mirrors with the HTTP reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

Message = dict[str, Any]


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/v1/ws"


class WsClient:
    def __init__(self, http_url: str, **connect_kw: Any) -> None:
        self.url = ws_url(http_url)
        self.connect_kw = connect_kw
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.seen: list[Message] = []
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed: Exception | None = None

    async def __aenter__(self) -> WsClient:
        self.ws = await connect(self.url, max_size=64 * 1024 * 1024, **self.connect_kw)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.seen.append(message)
                self.inbox.put_nowait(message)
        except Exception as exc:  # closed: tests look at close codes themselves
            self.closed = exc

    async def send(self, **op: Any) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(op))

    async def expect(self, match: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        """The next message that ``match``es (others before it are dropped from the inbox)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                if match(message):
                    return message

    async def drain(self, quiet: float = 0.3) -> list[Message]:
        """Everything that arrives until nothing has for ``quiet`` seconds."""
        out = []
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(quiet):
                    out.append(await self.inbox.get())
        return out


def is_type(kind: str, channel: str | None = None) -> Callable[[Message], bool]:
    return lambda m: m.get("type") == kind and (channel is None or m.get("channel") == channel)


class BookMirror:
    """A book rebuilt from snapshot + updates; ``apply`` returns False on a gap."""

    def __init__(self) -> None:
        self.sequence: int | None = None
        self.levels: dict[str, dict[str, str]] = {"bids": {}, "asks": {}}
        self.snapshots = 0

    def apply(self, m: Message) -> bool:
        if m.get("channel") != "book":
            return True
        if m["type"] == "snapshot":
            self.sequence = m["sequence"]
            self.levels = {side: {p: q for p, q in m[side]} for side in ("bids", "asks")}
            self.snapshots += 1
            return True
        if m["type"] != "update" or self.sequence is None:
            return True
        if m["sequence"] <= self.sequence:
            return True  # older than the snapshot
        if m["sequence"] != self.sequence + 1:
            return False
        for side in ("bids", "asks"):
            for price, qty in m[side]:
                if Decimal(qty) == 0:
                    self.levels[side].pop(price, None)
                else:
                    self.levels[side][price] = qty
        self.sequence = m["sequence"]
        return True

    def top(self, depth: int) -> dict[str, list[list[str]]]:
        bids = sorted(self.levels["bids"].items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.levels["asks"].items(), key=lambda kv: Decimal(kv[0]))
        return {"bids": [list(x) for x in bids[:depth]], "asks": [list(x) for x in asks[:depth]]}


class TradesMirror:
    def __init__(self) -> None:
        self.trades: list[Message] = []

    def apply(self, m: Message) -> None:
        if m.get("channel") == "trades" and m["type"] in ("snapshot", "update"):
            self.trades.extend(m["trades"])


class CandlesMirror:
    def __init__(self) -> None:
        self.candles: dict[str, Message] = {}

    def apply(self, m: Message) -> None:
        if m.get("channel") == "candles" and m["type"] in ("snapshot", "update"):
            for c in m["candles"]:
                self.candles[c["open_time"]] = c
