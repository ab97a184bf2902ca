"""The public WebSocket channels against the real server: what a client rebuilds equals the reads.

Given a market and two funded traders, when a random flow of a thousand orders (limits on both
sides around a mid, market orders, cancels) runs while a client holds ``book``, ``trades``,
``candles`` and ``ticker`` subscriptions, then the book rebuilt from the snapshot and the updates
equals ``GET /v1/markets/{symbol}/book``, the trades and candles streamed equal the HTTP ones,
and the last ticker equals ``GET .../ticker``. A client that drops an update sees the gap at the
next one, resubscribes, and is whole again. On PostgreSQL, a second api process (``spotex api``)
sends exactly the same book updates as the first.
"""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Api, Server, api_process, funded_traders, ok
from tests.e2e.ws_client import BookMirror, CandlesMirror, TradesMirror, WsClient, is_type

# A thousand orders on the embedded default; fewer on PostgreSQL to keep CI short (each POST
# costs a request append either way; the stream's code path is the same).
FLOW = {"sqlite": 1000, "postgres": 300}


@pytest.fixture(scope="module")
def traders(anon: Api, admin: Api, market: str) -> list[Api]:
    return funded_traders(anon, admin, "ws")


async def random_flow(url: str, traders: list[Api], market: str, n: int, seed: int,
                      concurrency: int = 16) -> dict[str, int]:
    """n random commands from the traders, ``concurrency`` in flight; counts by outcome."""
    rng = random.Random(seed)
    placed: list[tuple[int, str]] = []
    counts = {"limit": 0, "market": 0, "cancel": 0}
    sem = asyncio.Semaphore(concurrency)
    clients = [httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {t.token}"})
               for t in traders]

    async def one(i: int) -> None:
        who = rng.randrange(len(clients))
        http = clients[who]
        r = rng.random()
        async with sem:
            if r < 0.15 and placed:
                who, order_id = rng.choice(placed)
                resp = await clients[who].delete(f"/v1/orders/{order_id}")
                assert resp.status_code == 202, resp.text
                counts["cancel"] += 1
                return
            side = rng.choice(("buy", "sell"))
            qty = f"{rng.randint(1, 500) / 10000:.4f}"
            if r < 0.25:
                body: dict[str, Any] = {"market": market, "side": side, "type": "market", "quantity": qty}
                counts["market"] += 1
            else:
                # buys mostly below 100, sells mostly above: a book that crosses now and then
                offset = rng.randint(-40, 200) / 100
                price = Decimal("100") - Decimal(str(offset)) if side == "buy" else \
                    Decimal("100") + Decimal(str(offset))
                body = {"market": market, "side": side, "type": "limit", "price": f"{price:.2f}",
                        "quantity": qty, "time_in_force": rng.choice(("GTC", "GTC", "GTC", "IOC"))}
                counts["limit"] += 1
            resp = await http.post("/v1/orders", json=body)
            assert resp.status_code == 202, resp.text
            if body["type"] == "limit":
                placed.append((who, resp.json()["order_id"]))

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for c in clients:
            await c.aclose()
    return counts


def wait_caught_up(api: Api, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.get("/readyz")
        body = r.json()
        if r.status_code == 200 and body["engine"]["lag"] == 0 and all(
                p["lag"] == 0 for p in body["projections"].values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not catch up in {timeout}s: {body}")


def all_trades(api: Api, market: str, since_id: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = ok(api.get(f"/v1/markets/{market}/trades", params=params))
        out.extend(t for t in page["data"] if t["trade_id"] >= since_id)
        cursor = page["next_cursor"]
        if not cursor or page["data"][-1]["trade_id"] < since_id:
            return sorted(out, key=lambda t: t["trade_id"])


async def converge(check: Any, client: WsClient, apply: Any, timeout: float = 20.0) -> None:
    """Apply what streams in until ``check()`` holds (the stream trails the reads by a tick)."""
    deadline = time.monotonic() + timeout
    while True:
        for m in await client.drain(0.2):
            apply(m)
        problem = await asyncio.to_thread(check)
        if problem is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(problem)


def test_streams_rebuild_what_the_reads_show(request: pytest.FixtureRequest, server: Server, anon: Api,
                                              market: str, traders: list[Api]) -> None:
    flow = FLOW["postgres" if "postgres" in request.node.callspec.id else "sqlite"]

    async def scenario() -> None:
        book, trades, candles = BookMirror(), TradesMirror(), CandlesMirror()
        tickers: list[dict[str, Any]] = []
        gaps: list[dict[str, Any]] = []

        def apply(m: dict[str, Any]) -> None:
            if not book.apply(m):
                gaps.append(m)
            trades.apply(m)
            candles.apply(m)
            if m.get("channel") == "ticker" and m["type"] in ("snapshot", "update"):
                tickers.append(m["ticker"])

        async with WsClient(server.url) as ws:
            for channel in ("book", "trades", "ticker"):
                await ws.send(op="subscribe", channel=channel, market=market)
            await ws.send(op="subscribe", channel="candles", market=market, interval="1m", id="c")
            for _ in range(4):
                apply(await ws.expect(is_type("snapshot")))
            counts = await random_flow(server.url, traders, market, flow, seed=7)
            await asyncio.to_thread(wait_caught_up, anon)

            def same_book() -> str | None:
                rest = ok(anon.get(f"/v1/markets/{market}/book", params={"depth": 1000}))
                mine = book.top(1000)
                if book.sequence != rest["sequence"] or mine != {"bids": rest["bids"], "asks": rest["asks"]}:
                    return f"book differs: ws seq {book.sequence}, rest seq {rest['sequence']}"
                return None

            await converge(same_book, ws, apply)
            assert not gaps, f"gaps in the book stream: {gaps[:3]}"
            assert book.snapshots == 1

            ids = [t["trade_id"] for t in trades.trades]
            assert ids == sorted(set(ids)), "trades arrive once each, in trade-id order"
            assert len(ids) > flow // 20, f"the flow made too few trades to test: {counts}"
            assert trades.trades == all_trades(anon, market, ids[0])

            rest_candles = ok(anon.get(f"/v1/markets/{market}/candles", params={"interval": "1m"}))["data"]
            first = min(candles.candles)
            expected = {c["open_time"]: c for c in rest_candles if c["open_time"] >= first}
            assert candles.candles == expected

            def same_ticker() -> str | None:
                rest = ok(anon.get(f"/v1/markets/{market}/ticker"))
                return None if tickers and tickers[-1] == rest else f"ticker {tickers[-1:]} != {rest}"

            await converge(same_ticker, ws, apply)

    asyncio.run(scenario())


def test_a_dropped_update_is_a_gap_and_a_resubscribe_makes_the_book_whole(
        server: Server, anon: Api, market: str, traders: list[Api]) -> None:
    async def scenario() -> None:
        book = BookMirror()
        async with WsClient(server.url) as ws:
            await ws.send(op="subscribe", channel="book", market=market)
            book.apply(await ws.expect(is_type("snapshot", "book")))
            flow = asyncio.create_task(random_flow(server.url, traders, market, 200, seed=11))
            # Lose one update on purpose: the next one shows the gap.
            dropped = await ws.expect(is_type("update", "book"))
            assert dropped["sequence"] > book.sequence
            gap_seen = resubscribed = False
            async with asyncio.timeout(60):
                while book.snapshots < 2:
                    m = await ws.inbox.get()
                    if m.get("channel") != "book":
                        continue
                    if resubscribed:  # what was queued before the fresh snapshot is ignored
                        if m["type"] == "snapshot":
                            book.apply(m)
                        continue
                    if not book.apply(m):
                        gap_seen = True
                        assert m["sequence"] > book.sequence + 1
                        await ws.send(op="subscribe", channel="book", market=market)
                        resubscribed = True
            assert gap_seen
            await flow
            await asyncio.to_thread(wait_caught_up, anon)

            def same_book() -> str | None:
                rest = ok(anon.get(f"/v1/markets/{market}/book", params={"depth": 1000}))
                if book.sequence != rest["sequence"] or book.top(1000) != {"bids": rest["bids"],
                                                                           "asks": rest["asks"]}:
                    return f"book differs after resync: ws {book.sequence}, rest {rest['sequence']}"
                return None

            def apply(m: dict[str, Any]) -> None:
                assert book.apply(m), f"a second gap: {m}"

            await converge(same_book, ws, apply)
            assert book.snapshots == 2

    asyncio.run(scenario())


def test_every_api_process_sends_the_same_book_stream(request: pytest.FixtureRequest, server: Server,
                                                      anon: Api, market: str, traders: list[Api]) -> None:
    """A second api process on the same database (``spotex api``) streams identical updates."""
    if "postgres" not in request.node.callspec.id:
        pytest.skip("spotex api runs on PostgreSQL only")
    with api_process(server.data_dir, request.getfixturevalue("postgres_url")) as second:
        async def scenario() -> None:
            async with WsClient(server.url) as one, WsClient(second) as two:
                for ws in (one, two):
                    await ws.send(op="subscribe", channel="book", market=market)
                snaps = [await ws.expect(is_type("snapshot", "book")) for ws in (one, two)]
                await random_flow(server.url, traders, market, 200, seed=23)
                await asyncio.to_thread(wait_caught_up, anon)
                head = ok(anon.get(f"/v1/markets/{market}/book"))["sequence"]
                streams = []
                for ws, snap in zip((one, two), snaps, strict=True):
                    updates = []
                    while not updates or updates[-1]["sequence"] < head:
                        updates.append(await ws.expect(is_type("update", "book"), timeout=20))
                    streams.append({u["sequence"]: u for u in updates})
                    assert [u["sequence"] for u in updates] == list(range(snap["sequence"] + 1, head + 1))
                common = set(streams[0]) & set(streams[1])
                assert len(common) > 50
                assert all(streams[0][s] == streams[1][s] for s in common)

        asyncio.run(scenario())
