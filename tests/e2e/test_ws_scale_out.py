"""Fan-out past one process: two api processes serve WebSocket clients from the same log.

Given ``spotex serve`` on PostgreSQL (api, engine, projections) and a second api process
(``spotex api``) on the same database, each following the log with its own WebSocket follower,
when orders flow through both processes' HTTP api:

- a client of each process rebuilds ``book`` from its snapshot and updates without a gap to
  exactly ``GET /v1/markets/{symbol}/book`` (levels and sequence), and its ``trades`` equal
  ``GET .../trades``: each process streams the whole market, not only what it was sent itself;
- the ``user`` channel on either process delivers each of the user's order status changes in
  order, ending at ``GET /v1/orders/{id}``, and never an order of the other user; a user
  followed on both processes gets the same messages from each.

Real server processes, the real ``websockets`` client; PostgreSQL only (``spotex api`` needs it).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Api, Server, api_process, fund, funded_traders, ok, start_server, stop_server
from tests.e2e.test_ws_market import all_trades, converge, random_flow, wait_caught_up
from tests.e2e.test_ws_user import check_history, order_histories, settle, subscribe_user, trade_alternately
from tests.e2e.ws_client import BookMirror, TradesMirror, WsClient, is_type

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``spotex serve`` on PostgreSQL (this module's ``server``: the conftest's also runs SQLite)."""
    s = start_server(tmp_path_factory.mktemp("spotex-scale-out"), {"SPOTEX_DATABASE_URL": postgres_url})
    try:
        yield s
    finally:
        code = stop_server(s)
        assert code == 0, f"spotex serve exited with {code}:\n{s.output()[-5000:]}"


@pytest.fixture(scope="module")
def second(server: Server, postgres_url: str) -> Iterator[str]:
    """A second api process, ``spotex api``, on the same database: its base URL."""
    with api_process(Path(server.data_dir), postgres_url) as url:
        yield url


@pytest.fixture(scope="module")
def traders(anon: Api, admin: Api, market: str) -> list[Api]:
    return funded_traders(anon, admin, "wsx")


def on(url: str, api: Api) -> Api:
    """The same user's client, against another api process."""
    return Api(url, api.token)


def test_a_client_of_each_process_rebuilds_the_book_and_trades_of_the_reads(
        server: Server, second: str, anon: Api, market: str, traders: list[Api]) -> None:
    async def scenario() -> None:
        urls = (server.url, second)
        mirrors: list[tuple[BookMirror, TradesMirror, list[dict[str, Any]]]] = [
            (BookMirror(), TradesMirror(), []) for _ in urls]

        def applier(i: int) -> Any:
            book, trades, gaps = mirrors[i]

            def apply(m: dict[str, Any]) -> None:
                if not book.apply(m):
                    gaps.append(m)
                trades.apply(m)
            return apply

        async with WsClient(server.url) as one, WsClient(second) as two:
            clients = (one, two)
            for i, ws in enumerate(clients):
                for channel in ("book", "trades"):
                    await ws.send(op="subscribe", channel=channel, market=market)
                for _ in range(2):
                    applier(i)(await ws.expect(is_type("snapshot")))
            # Orders through both processes' HTTP api: one log, whichever took them.
            await asyncio.gather(
                random_flow(server.url, traders, market, 150, seed=31),
                random_flow(second, [on(second, t) for t in traders], market, 150, seed=37))
            await asyncio.to_thread(wait_caught_up, anon)
            for i, (url, ws) in enumerate(zip(urls, clients, strict=True)):
                book, trades, gaps = mirrors[i]
                reads = Api(url)

                def same_book(book: BookMirror = book, reads: Api = reads) -> str | None:
                    rest = ok(reads.get(f"/v1/markets/{market}/book", params={"depth": 1000}))
                    if book.sequence != rest["sequence"] or book.top(1000) != {"bids": rest["bids"],
                                                                              "asks": rest["asks"]}:
                        return f"{reads.url}: ws book #{book.sequence} != GET book #{rest['sequence']}"
                    return None

                await converge(same_book, ws, applier(i))
                assert not gaps, f"{url}: gaps in the book stream: {gaps[:3]}"
                assert book.snapshots == 1
                ids = [t["trade_id"] for t in trades.trades]
                assert ids == sorted(set(ids)), f"{url}: trades once each, in trade-id order"
                assert len(ids) > 20, "the flow made too few trades to test"
                assert trades.trades == all_trades(reads, market, ids[0])
            # Both processes followed the same log to the same place.
            assert mirrors[0][0].levels == mirrors[1][0].levels
            assert mirrors[0][0].sequence == mirrors[1][0].sequence
            assert mirrors[0][1].trades[-1] == mirrors[1][1].trades[-1]

    asyncio.run(scenario())


def test_the_user_channel_on_each_process_is_in_order_and_private(
        server: Server, second: str, anon: Api, admin: Api, fresh_market: str) -> None:
    """``a`` follows its stream on both processes, ``b`` on the second only; they trade together
    (in a market of their own), each placing orders through either process."""
    market = fresh_market
    a, a_name, _ = anon.onboard("wsxa")
    b, b_name, _ = anon.onboard("wsxb")
    for name in (a_name, b_name):
        fund(admin, name, "USDT", "1000000")
        fund(admin, name, market.split("-")[0], "1000")

    async def scenario() -> None:
        async with WsClient(server.url) as a1, WsClient(second) as a2, WsClient(second) as b2:
            snaps = {"a1": await subscribe_user(a1, a.token or ""),
                     "a2": await subscribe_user(a2, a.token or ""),
                     "b2": await subscribe_user(b2, b.token or "")}
            rng = random.Random(11)
            mine = await asyncio.to_thread(
                trade_alternately, {"a": a, "b": b}, rng, 120, market, 300, 4,
                lambda who, user: on(rng.choice((server.url, second)), user))  # either process
            got = {"a1": await settle(a1, a), "a2": await settle(a2, on(second, a)),
                   "b2": await settle(b2, on(second, b))}
            for conn, who, user in (("a1", "a", a), ("a2", "a", on(second, a)), ("b2", "b", on(second, b))):
                positions = [m["position"] for m in got[conn] if m.get("channel") == "user"
                             and m["type"] in ("order", "fill", "balance", "notification")]
                assert positions == sorted(positions), f"{conn}: messages out of log order"
                histories = order_histories(got[conn])
                assert set(histories) == set(mine[who]), f"{conn}: every own order, and only own orders"
                for order_id, history in histories.items():
                    check_history(user, order_id, history)
                text = repr(got[conn])
                assert not any(oid in text for oid in mine["b" if who == "a" else "a"]), conn
            # The same user on two processes: the same messages after both snapshots.
            since = max(snaps["a1"]["position"], snaps["a2"]["position"])

            def stream(conn: str) -> list[dict[str, Any]]:
                return [m for m in got[conn] if m.get("channel") == "user"
                    and m["type"] in ("order", "fill", "balance", "notification") and m["position"] > since]

            assert stream("a1") == stream("a2")
            assert len(stream("a1")) > 100

    asyncio.run(scenario())
