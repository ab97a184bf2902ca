"""Every read model, fed by the real engine, checked on SQLite and PostgreSQL.

Given a scripted scenario (exact expectations, worked out by hand) followed by a seeded random
flow of orders, cancels, amends, withdrawals and transfers over ~40 hours of request times, when
every projection catches up, then each read model agrees with what was decided: the scripted
rows field by field, and the random flow against values computed independently in the test from
the engine's own state or the log's facts (balances, open orders, depth, trades, candles,
ticker, the event index).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest

from domain import commands as c
from domain.amounts import format_units
from domain.markets import Asset, Market
from engine.log import Logs, RecordedOutcome
from projections import queries as q
from projections.base import epoch_seconds, iso_of
from projections.candles import PERIODS
from projections.notifications import KINDS
from projections.runner import catch_up, followers_for, log_sources
from projections.store import ReadStore, open_read_store
from spotex.wiring import build_logs
from tests.integration.conftest import ExchangeFlow, fresh_backend


def project_all(store: ReadStore, logs: Logs) -> None:
    followers = followers_for(store, logs)
    for source in log_sources(logs).values():
        catch_up(list(followers.values()), source, batch=97)  # odd batches: boundaries everywhere
    failed = [f.failed for f in followers.values() if f.failed]
    assert not failed, failed


@dataclass
class World:
    logs: Logs
    store: ReadStore
    flow: ExchangeFlow
    ids: dict[str, str]
    outcomes: list[RecordedOutcome]

    def uid(self, name: str) -> str:
        user_id = self.flow.user_id(name)
        assert user_id is not None
        return user_id

    def facts(self, kind: str) -> Iterator[tuple[RecordedOutcome, dict[str, Any]]]:
        for o in self.outcomes:
            for f in o.facts:
                if f["type"] == kind:
                    yield o, f

    def market(self, symbol: str) -> Market:
        return self.flow.sequencer.exchange.markets[symbol]


def scripted(flow: ExchangeFlow) -> dict[str, str]:
    """Two users trading by hand, every order closed before the random flow starts."""
    ids: dict[str, str] = {}
    send = flow.send
    for name in ("sam", "tess"):
        send(None, c.RegisterUser(username=name, password_hash=f"hash-{name}"), jitter=False)
        send("admin", c.Deposit(username=name, asset="USDT", amount="10000", reference="su"), jitter=False)
        send("admin", c.Deposit(username=name, asset="ETH", amount="10", reference="se"), jitter=False)
        send("admin", c.Deposit(username=name, asset="BTC", amount="1", reference="sb"), jitter=False)

    def order(user: str, key: str, **kw: Any) -> None:
        ids[key] = send(user, c.PlaceOrder(**kw), jitter=False)

    order("sam", "s1", market="ETH-USDT", side="sell", type="limit", price="2000.00", quantity="1.00",
          client_order_id="s1")
    order("tess", "t1", market="ETH-USDT", side="buy", type="limit", price="2001.00", quantity="0.40")
    order("tess", "t2", market="ETH-USDT", side="buy", type="limit", price="1999.00", quantity="0.10",
          time_in_force="IOC")
    send("sam", c.AmendOrder(order_id=uuid.UUID(ids["s1"]), quantity="0.80"), jitter=False)
    order("tess", "t3", market="ETH-USDT", side="buy", type="market", quantity="0.05")
    order("tess", "t4", market="ETH-USDT", side="buy", type="limit", price="2000", quantity="100")
    send("sam", c.CancelOrder(order_id=uuid.UUID(ids["s1"])), jitter=False)
    order("sam", "s2", market="BTC-USDT", side="sell", type="limit", price="100.0", quantity="0.100")
    order("tess", "t5", market="BTC-USDT", side="buy", type="limit", price="100.0", quantity="0.100")
    ids["w1"] = send("sam", c.RequestWithdrawal(asset="USDT", amount="100", reference="w1"), jitter=False)
    send("admin", c.CompleteWithdrawal(withdrawal_id=uuid.UUID(ids["w1"])), jitter=False)
    ids["w2"] = send("sam", c.RequestWithdrawal(asset="USDT", amount="50", reference="w2"), jitter=False)
    send("admin", c.FailWithdrawal(withdrawal_id=uuid.UUID(ids["w2"])), jitter=False)
    ids["w3"] = send("sam", c.RequestWithdrawal(asset="USDT", amount="1000000000", reference="w3"),
                     jitter=False)
    return ids


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    make = request.getfixturevalue("make_postgres_database") if request.param == "postgres" else None
    tmp: Path = tmp_path_factory.mktemp("world")
    with fresh_backend(request.param, tmp, make) as settings:  # type: ignore[arg-type]
        logs = build_logs(settings, create_tables=False)
        store = open_read_store(settings)
        flow = ExchangeFlow(logs, seed=11, step=timedelta(minutes=4))
        flow.bootstrap()
        ids = scripted(flow)
        flow.run()
        project_all(store, logs)  # once in the middle: later batches resume from here
        flow.trade(600)
        flow.send("admin", c.HaltMarket(market="BTC-USDT"))
        flow.send("admin", c.ResumeMarket(market="BTC-USDT"))
        flow.trade(60)
        flow.send("admin", c.DelistMarket(market="ETH-USDT"))
        flow.run()
        assert flow.sequencer.exchange.check_invariants() == []
        project_all(store, logs)
        yield World(logs, store, flow, ids, list(logs.iter_outcomes()))
        store.close()


# -- the scripted scenario, field by field --------------------------------------------------


def test_orders_scripted(world: World) -> None:
    ids, o = world.ids, lambda key: q.order(world.store, world.ids[key])
    s1 = o("s1")
    assert s1 is not None
    assert {k: s1[k] for k in ("client_order_id", "market", "side", "type", "price", "quantity",
                               "filled_quantity", "remaining_quantity", "filled_quote", "average_price",
                               "fee", "fee_asset", "time_in_force", "post_only", "status")} == {
        "client_order_id": "s1", "market": "ETH-USDT", "side": "sell", "type": "limit",
        "price": "2000.00", "quantity": "0.80", "filled_quantity": "0.45", "remaining_quantity": "0.00",
        "filled_quote": "900.000000", "average_price": "2000.000000", "fee": "0.000000",
        "fee_asset": "USDT", "time_in_force": "GTC", "post_only": False, "status": "cancelled",
    }
    assert s1["user_id"] == world.uid("sam")
    t1 = o("t1")
    assert t1 is not None
    assert (t1["status"], t1["filled_quantity"], t1["remaining_quantity"], t1["filled_quote"],
            t1["average_price"], t1["fee_asset"]) == ("filled", "0.40", "0.00", "800.000000",
                                                       "2000.000000", "ETH")
    t2 = o("t2")
    assert t2 is not None and (t2["status"], t2["filled_quantity"]) == ("expired", "0.00")
    t3 = o("t3")
    assert t3 is not None
    assert (t3["type"], t3["price"], t3["quantity"], t3["status"], t3["filled_quote"]) == (
        "market", None, "0.05", "filled", "100.000000")
    t4 = o("t4")
    assert t4 is not None
    assert (t4["status"], t4["reject_reason"], t4["price"], t4["quantity"], t4["filled_quantity"]) == (
        "rejected", "insufficient_funds", "2000", "100", "0.00")
    assert t4["created_at"] == t4["updated_at"]
    # fees on BTC-USDT: maker 0.1 % of 10 USDT charged to the seller (maker) in USDT, taker
    # 0.2 % of 0.1 BTC charged to the buyer in BTC
    s2, t5 = o("s2"), o("t5")
    assert s2 is not None and t5 is not None
    assert (s2["status"], s2["fee"], s2["fee_asset"]) == ("filled", "0.010000", "USDT")
    assert (t5["status"], t5["fee"], t5["fee_asset"]) == ("filled", "0.00020000", "BTC")
    assert q.order(world.store, str(uuid.uuid4())) is None
    assert ids


def test_fills_scripted(world: World) -> None:
    sam = q.fills(world.store, world.uid("sam"), market="BTC-USDT")["data"]
    tess = q.fills(world.store, world.uid("tess"), order_id=world.ids["t5"])["data"]
    assert len(sam) == 1 and len(tess) == 1
    assert sam[0]["trade_id"] == tess[0]["trade_id"]
    assert {k: sam[0][k] for k in ("side", "price", "quantity", "quote_quantity", "fee", "fee_asset",
                                   "liquidity", "market")} == {
        "side": "sell", "price": "100.0", "quantity": "0.100", "quote_quantity": "10.000000",
        "fee": "0.010000", "fee_asset": "USDT", "liquidity": "maker", "market": "BTC-USDT"}
    assert (tess[0]["side"], tess[0]["liquidity"], tess[0]["fee"], tess[0]["fee_asset"]) == (
        "buy", "taker", "0.00020000", "BTC")
    s1_fills = q.fills(world.store, world.uid("sam"), order_id=world.ids["s1"])["data"]
    assert [f["quantity"] for f in s1_fills] == ["0.05", "0.40"]  # newest first
    assert {f["liquidity"] for f in s1_fills} == {"maker"}


def test_withdrawals_scripted(world: World) -> None:
    w = {k: q.withdrawal(world.store, world.ids[k]) for k in ("w1", "w2", "w3")}
    assert {k: (v["status"], v["asset"], v["amount"]) for k, v in w.items() if v} == {
        "w1": ("completed", "USDT", "100.000000"),
        "w2": ("failed", "USDT", "50.000000"),
        "w3": ("rejected", "USDT", "1000000000"),
    }
    w3 = w["w3"]
    assert w3 is not None and w3["reason"] == "insufficient_funds" and w3["user_id"] == world.uid("sam")
    listed = q.withdrawals(world.store, world.uid("sam"))["data"]
    assert [x["withdrawal_id"] for x in listed] == [world.ids["w3"], world.ids["w2"], world.ids["w1"]]


def test_notifications_and_preferences(world: World) -> None:
    store, sam, tess = world.store, world.uid("sam"), world.uid("tess")
    kinds = [n["kind"] for n in q.notifications(store, sam)["data"]]
    assert kinds == ["deposit_credited"] * 3 + ["order_cancelled", "order_filled",
                                                "withdrawal_completed", "withdrawal_failed"]
    tess_kinds = [n["kind"] for n in q.notifications(store, tess)["data"]]
    assert tess_kinds == ["deposit_credited"] * 3 + ["order_filled", "order_expired", "order_filled",
                                                     "order_rejected", "order_filled"]
    rejected = q.notifications(store, tess)["data"][-2]
    assert rejected["data"]["order_id"] == world.ids["t4"]
    assert rejected["data"]["reason"] == "insufficient_funds"
    first = q.notifications(store, sam)["data"][0]
    assert first["data"]["amount"] == "10000.000000" and first["data"]["asset"] == "USDT"
    # paging with after
    page = q.notifications(store, sam, limit=2)
    assert len(page["data"]) == 2 and page["next_cursor"] is not None
    rest = q.notifications(store, sam, after=page["next_cursor"])["data"]
    assert [n["kind"] for n in page["data"] + rest] == kinds
    # preferences: a plain setting, applied when reading
    assert q.preferences(store, sam) == {"kinds": list(KINDS), "channels": ["ws"]}
    q.set_preferences(store, sam, ["withdrawal_failed", "order_filled"], ["ws", "email"])
    assert q.preferences(store, sam) == {"kinds": ["order_filled", "withdrawal_failed"],
                                         "channels": ["ws", "email"]}
    assert [n["kind"] for n in q.notifications(store, sam)["data"]] == ["order_filled", "withdrawal_failed"]
    q.set_preferences(store, sam, list(KINDS), ["email"])
    assert q.notifications(store, sam)["data"] == []
    assert len(q.notifications(store, sam, channel="email")["data"]) == len(kinds)
    with pytest.raises(ValueError, match="unknown notification kind"):
        q.set_preferences(store, sam, ["order_teleported"], ["ws"])
    with pytest.raises(ValueError, match="unknown channel"):
        q.set_preferences(store, sam, ["order_filled"], ["pigeon"])
    q.set_preferences(store, sam, list(KINDS), ["ws"])


# -- the random flow, against independent computations ------------------------------------


def test_users(world: World) -> None:
    registered = [f for _, f in world.facts("UserRegistered")]
    assert len(registered) == 7
    for f in registered:
        user = q.get_user_by_name(world.store, f["username"])
        assert user is not None
        assert (user["user_id"], user["roles"], user["password_hash"]) == (
            f["user_id"], f["roles"], f["password_hash"])
        assert q.get_user(world.store, f["user_id"]) == user
    assert q.get_user_by_name(world.store, "nobody") is None


def test_assets_and_markets(world: World) -> None:
    assert q.assets(world.store) == [{"symbol": "BTC", "precision": 8}, {"symbol": "ETH", "precision": 18},
                                     {"symbol": "USDT", "precision": 6}]
    markets = {m["symbol"]: m for m in q.markets(world.store)}
    assert markets["BTC-USDT"] == {
        "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "tick_size": "0.5", "lot_size": "0.001",
        "min_notional": "0", "maker_fee": "0.001", "taker_fee": "0.002", "status": "trading"}
    assert markets["ETH-USDT"]["status"] == "delisted"
    assert q.market(world.store, "ETH-USDT") == markets["ETH-USDT"]
    assert q.market(world.store, "XRP-USDT") is None
    engine = world.flow.sequencer.exchange
    assert {s: m["status"] for s, m in markets.items()} == dict(engine.status)


def test_balances_equal_the_engines_ledger(world: World) -> None:
    engine = world.flow.sequencer.exchange
    precision = {a.symbol: a.precision for a in engine.assets.values()}
    per_account: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for (account, asset), (available, frozen) in engine.ledger.balances.items():
        per_account[account][asset] = (available, frozen)
    assert any(v[0] > 2**63 for rows in per_account.values() for v in rows.values())  # ETH units
    for account, rows in per_account.items():
        got = q.balances(world.store, account)
        assert got["position"] == world.logs.last_outcome_position()
        assert got["balances"] == [
            {"asset": a, "available": format_units(av, precision[a]),
             "frozen": format_units(fr, precision[a]), "total": format_units(av + fr, precision[a])}
            for a, (av, fr) in sorted(rows.items())
        ]


def test_ledger_sums_to_balances_and_pages(world: World) -> None:
    engine = world.flow.sequencer.exchange
    precision = {a.symbol: a.precision for a in engine.assets.values()}
    for name in ("alice", "sam"):
        uid = world.uid(name)
        rows, cursor = [], None
        while True:
            page = q.ledger(world.store, uid, limit=7, cursor=cursor)
            rows += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert rows == q.ledger(world.store, uid, limit=1000)["data"]
        assert [r["position"] for r in rows] == sorted((r["position"] for r in rows), reverse=True)
        sums: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for r in rows:
            sums[r["asset"]][0] += Decimal(r["available_delta"])
            sums[r["asset"]][1] += Decimal(r["frozen_delta"])
        for asset, (available, frozen) in sums.items():
            units = Decimal(1).scaleb(-precision[asset])
            assert available == engine.ledger.available(uid, asset) * units
            assert frozen == engine.ledger.frozen(uid, asset) * units
        assert {r["kind"] for r in rows} >= {"deposited", "order_accepted", "trade_executed", "order_closed"}
        for r in rows[:20]:
            found = q.event_position(world.store, r["event_id"])
            assert found is not None and found["log"] == "exchange" and found["position"] == r["position"]
    with pytest.raises(q.BadCursor):
        q.ledger(world.store, world.uid("alice"), cursor="not-a-cursor")


def test_orders_against_the_log_and_the_engine(world: World) -> None:
    engine = world.flow.sequencer.exchange
    accepted = {f["order_id"]: f for _, f in world.facts("OrderAccepted")}
    rejected = {f["order_id"]: f for _, f in world.facts("OrderRejected")}
    closed = {f["order_id"]: f["status"] for _, f in world.facts("OrderClosed")}
    filled: dict[str, int] = defaultdict(int)
    for _, f in world.facts("TradeExecuted"):
        filled[f["maker_order_id"]] += f["quantity"]
        filled[f["taker_order_id"]] += f["quantity"]
    assert len(accepted) > 200 and len(rejected) > 10 and len(engine.orders) > 5
    for oid, f in accepted.items():
        row = q.order(world.store, oid)
        assert row is not None
        m = world.market(f["market"])
        assert row["filled_quantity"] == m.format_quantity(filled[oid])
        if oid in engine.orders:  # still open
            open_order = engine.orders[oid]
            assert row["status"] == ("partially_filled" if open_order.filled else "open")
            assert row["remaining_quantity"] == m.format_quantity(open_order.remaining)
            assert row["price"] == m.format_price(open_order.price)
        else:
            assert row["status"] == closed[oid]
    for oid, f in rejected.items():
        row = q.order(world.store, oid)
        assert row is not None and (row["status"], row["reject_reason"]) == ("rejected", f["reason"])
    # listing: open/closed partition all, newest first, pages join up
    alice = world.uid("alice")
    every = q.orders(world.store, alice, limit=1000)["data"]
    opened = q.orders(world.store, alice, status="open", limit=1000)["data"]
    done = q.orders(world.store, alice, status="closed", limit=1000)["data"]
    assert len(every) == len(opened) + len(done)
    assert {o["status"] for o in opened} <= {"open", "partially_filled"}
    paged, cursor = [], None
    while True:
        page = q.orders(world.store, alice, limit=9, cursor=cursor)
        paged += page["data"]
        if not page["next_cursor"]:
            break
        cursor = page["next_cursor"]
    assert paged == every
    only_btc = q.orders(world.store, alice, market="BTC-USDT", limit=1000)["data"]
    assert only_btc and {o["market"] for o in only_btc} == {"BTC-USDT"}


def test_fills_against_trades(world: World) -> None:
    trades = [f for _, f in world.facts("TradeExecuted")]
    per_user: dict[str, int] = defaultdict(int)
    for f in trades:
        per_user[f["maker_user_id"]] += 1
        per_user[f["taker_user_id"]] += 1
    for user_id, count in per_user.items():
        data = q.fills(world.store, user_id, limit=1000)["data"]
        assert len(data) == count
        assert [d["trade_id"] for d in data] == sorted((d["trade_id"] for d in data), reverse=True)


def test_book_depth_equals_the_engines_resting_orders(world: World) -> None:
    engine = world.flow.sequencer.exchange
    for symbol in ("BTC-USDT", "ETH-USDT"):
        m = world.market(symbol)
        levels: dict[tuple[str, int], int] = defaultdict(int)
        for order in engine.orders.values():
            if order.market == symbol and order.booked:
                levels[(order.side, order.price)] += order.remaining
        bids = [[m.format_price(p), m.format_quantity(v)]
                for (s, p), v in sorted(levels.items(), key=lambda kv: -kv[0][1]) if s == "buy"]
        asks = [[m.format_price(p), m.format_quantity(v)]
                for (s, p), v in sorted(levels.items(), key=lambda kv: kv[0][1]) if s == "sell"]
        got = q.book(world.store, symbol, depth=5000)
        assert got is not None
        assert (got["bids"], got["asks"]) == (bids, asks)
        assert q.book(world.store, symbol, depth=2)["asks"] == asks[:2]  # type: ignore[index]
        # replaying the change log from sequence 0 gives the same book, without gaps
        replay: dict[str, dict[str, str]] = {"bids": {}, "asks": {}}
        last = 0
        while True:
            updates = q.book_updates(world.store, symbol, last, limit=50)
            if not updates:
                break
            for u in updates:
                assert u["sequence"] == last + 1
                last = u["sequence"]
                assert u["bids"] or u["asks"]
                for side in ("bids", "asks"):
                    for price, qty in u[side]:
                        if Decimal(qty) == 0:
                            replay[side].pop(price)
                        else:
                            replay[side][price] = qty
        assert last == got["sequence"] > 0
        assert sorted(replay["bids"].items()) == sorted((p, v) for p, v in bids)
        assert sorted(replay["asks"].items()) == sorted((p, v) for p, v in asks)
    eth = q.book(world.store, "ETH-USDT")
    assert eth is not None and eth["bids"] == [] and eth["asks"] == []  # delisted: all cancelled
    assert q.book(world.store, "XRP-USDT") is None


def test_trades_equal_the_log(world: World) -> None:
    for symbol in ("BTC-USDT", "ETH-USDT"):
        m = world.market(symbol)
        want = [
            {"trade_id": f["trade_id"], "price": m.format_price(f["price"]),
             "quantity": m.format_quantity(f["quantity"]),
             "quote_quantity": format_units(f["quote_amount"], m.quote_precision),
             "taker_side": f["taker_side"], "time": o.time, "position": o.position}
            for o, f in world.facts("TradeExecuted") if f["market"] == symbol
        ][::-1]
        got, cursor = [], None
        while True:
            page = q.trades(world.store, symbol, limit=33, cursor=cursor)
            got += page["data"]
            if not (cursor := page["next_cursor"]):
                break
        assert got == want and len(want) > 20


def _trades_by_market(world: World, symbol: str) -> list[tuple[int, int, int, int, int]]:
    """(epoch seconds, price ticks, lots, quote units, trade id) in log order."""
    return [
        (epoch_seconds(o.time), f["price"], f["quantity"], f["quote_amount"], f["trade_id"])
        for o, f in world.facts("TradeExecuted")
        if f["market"] == symbol
    ]


def test_candles_computed_independently(world: World) -> None:
    for symbol in ("BTC-USDT", "ETH-USDT"):
        m = world.market(symbol)
        trades = _trades_by_market(world, symbol)
        for interval, seconds in PERIODS.items():
            buckets: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
            for t, price, lots, quote, _ in trades:
                buckets[t - t % seconds].append((price, lots, quote))
            want = [
                {"open_time": iso_of(start), "open": m.format_price(rows[0][0]),
                 "high": m.format_price(max(r[0] for r in rows)),
                 "low": m.format_price(min(r[0] for r in rows)),
                 "close": m.format_price(rows[-1][0]),
                 "volume": m.format_quantity(sum(r[1] for r in rows)),
                 "quote_volume": format_units(sum(r[2] for r in rows), m.quote_precision),
                 "trades": len(rows)}
                for start, rows in sorted(buckets.items())
            ]
            got = q.candles(world.store, symbol, interval, start=0, limit=1000)
            assert got == want, (symbol, interval)
        hourly = q.candles(world.store, symbol, "1h", start=0)
        assert len(hourly) > 10
        middle = hourly[3]["open_time"]
        assert q.candles(world.store, symbol, "1h", start=middle, end=middle) == [hourly[3]]
        assert q.candles(world.store, symbol, "1h", limit=2) == hourly[-2:]
    with pytest.raises(ValueError, match="interval"):
        q.candles(world.store, "BTC-USDT", "7m")


def _ticker_want(m: Market, trades: list[tuple[int, int, int, int, int]], end_minute: int
                 ) -> dict[str, Any]:
    start = end_minute - 1439 * 60
    inside = [t for t in trades if start <= t[0] - t[0] % 60 <= end_minute]
    inside.sort(key=lambda t: t[0] - t[0] % 60)  # by minute; log order within a minute (stable)
    last = trades[-1][1]
    open_ = inside[0][1] if inside else None
    pct = None
    if open_:
        pct = str((Decimal(100 * (last - open_)) / Decimal(open_)).quantize(Decimal("0.01"), ROUND_HALF_EVEN))
    return {
        "last": m.format_price(last),
        "open": None if open_ is None else m.format_price(open_),
        "high": m.format_price(max(t[1] for t in inside)) if inside else None,
        "low": m.format_price(min(t[1] for t in inside)) if inside else None,
        "volume": m.format_quantity(sum(t[2] for t in inside)),
        "quote_volume": format_units(sum(t[3] for t in inside), m.quote_precision),
        "trades": len(inside),
        "change": None if open_ is None else m.format_price(last - open_),
        "change_percent": pct,
    }


def test_ticker_computed_independently(world: World) -> None:
    for symbol in ("BTC-USDT", "ETH-USDT"):
        m = world.market(symbol)
        trades = _trades_by_market(world, symbol)
        latest_minute = max(t[0] - t[0] % 60 for t in trades)
        assert latest_minute - min(t[0] for t in trades) > 86400  # the window really moved
        got = q.ticker(world.store, symbol)
        assert got is not None
        want = _ticker_want(m, trades, latest_minute)
        assert {k: got[k] for k in want} == want
        book = q.book(world.store, symbol, depth=1)
        assert book is not None
        assert got["best_bid"] == (book["bids"][0][0] if book["bids"] else None)
        assert got["best_ask"] == (book["asks"][0][0] if book["asks"] else None)
        # the same window computed for another end time, at read time
        later = latest_minute + 7 * 3600
        at = iso_of(later + 13)
        from datetime import datetime

        shifted = q.ticker(world.store, symbol, now=datetime.fromisoformat(at))
        assert shifted is not None
        want_later = _ticker_want(m, trades, later)
        assert {k: shifted[k] for k in want_later} == want_later
    assert q.ticker(world.store, "XRP-USDT") is None


def test_event_index_and_outcomes(world: World) -> None:
    requests = list(world.logs.iter_requests())
    assert len(requests) == len(world.outcomes)
    for r in requests[::7]:
        found = q.event_position(world.store, r.request_id)
        assert found == {"event_id": r.request_id, "log": "requests", "position": r.position,
                         "actor": r.actor, "request_id": r.request_id}
    for o in world.outcomes[::5]:
        got = q.outcome_of(world.store, o.request_id)
        assert got is not None
        assert (got["position"], got["seq"], got["request_position"], got["command"], got["time"]) == (
            o.position, o.seq, o.request_position, o.command, o.time)
        assert got["facts"] == [f["type"] for f in o.facts]
        rejected = bool(o.facts) and o.facts[0]["type"].endswith("Rejected")
        assert got["status"] == ("rejected" if rejected else "accepted")
        assert got["event_id"] == q.outcome_event_id(o.request_id)
        assert q.event_position(world.store, got["event_id"])["position"] == o.position  # type: ignore[index]
    t4 = q.outcome_of(world.store, world.ids["t4"])
    assert t4 is not None and (t4["status"], t4["reason"]) == ("rejected", "insufficient_funds")
    assert q.outcome_of(world.store, str(uuid.uuid4())) is None
    assert q.event_position(world.store, str(uuid.uuid4())) is None


def test_positions_status_and_caught_up(world: World) -> None:
    head = world.logs.last_outcome_position()
    positions = q.positions(world.store)
    assert set(positions) == {
        "outcome_index", "users", "markets", "balances", "orders", "fills", "ledger", "withdrawals",
        "book", "trades", "candles", "ticker", "notifications", "request_index"}
    status = q.status(world.store, world.logs)
    assert all(row["lag"] == 0 and row["error"] is None for row in status.values())
    assert q.caught_up(world.store, head)
    assert not q.caught_up(world.store, head + 1)
    assert q.caught_up(world.store, head, names=["orders"])
    found = q.wait_for_outcome(world.store, world.ids["t1"], timeout=1)
    assert found is not None and found["command"] == "PlaceOrder"
    assert q.wait_for_outcome(world.store, str(uuid.uuid4()), timeout=0.05) is None


def test_market_objects_render_like_the_engine(world: World) -> None:
    # the rendering the tests rely on, checked once against hand-written strings
    m = Market.create("ETH-USDT", Asset("ETH", 18), Asset("USDT", 6), "0.01", "0.01")
    assert (m.format_price(200000), m.format_quantity(45)) == ("2000.00", "0.45")


def test_fast_paths_agree_with_the_slow_ones(world: World) -> None:
    """The hot-path helpers give exactly what the library and the domain give."""
    from projections.base import Formats, outcome_event_id, units_memo, units_str
    from projections.orders import average_price, average_units
    from projections.outcomes import LazyOutcome

    for o in world.outcomes[:300]:
        assert outcome_event_id(o.request_id) == str(uuid.uuid5(uuid.UUID(o.request_id), "outcome"))
    for precision in (0, 1, 2, 6, 8, 18):
        remembered = units_memo(precision, limit=3)  # also across the memo's restarts
        for units in (0, 1, -1, 5, -123456789, 10**25, -(10**25) - 7, 5, 1, -1):
            assert units_str(units, precision) == format_units(units, precision)
            assert remembered(units) == format_units(units, precision)
    rng = random.Random(7)
    for lot_size in ("0.0001", "0.01", "0.5", "1", "2.50", "10", "25"):
        for quote_p in (0, 2, 6, 18):
            cases = [(1, 1), (5, 2), (15, 2), (25, 2), (35, 2), (10**40 + 5, 10), (3, 10**30)]
            cases += [(rng.randrange(1, 10**rng.randrange(1, 40)), rng.randrange(1, 10**rng.randrange(1, 12)))
                      for _ in range(300)]
            for quote_units, lots in cases:
                got = average_units(quote_units, lots, lot_size)
                if len(str(got)) <= 27:  # the Decimal version rounds to 28 digits past that
                    assert units_str(got, quote_p) == average_price(quote_units, lots, lot_size, quote_p), \
                        (quote_units, lots, lot_size, quote_p)
    assert average_units(10**40 + 5, 10, "0.0001") == 10**43 + 5000  # exact at any size
    assert average_units(5, 2, "1") == 2 and average_units(7, 2, "1") == 4  # half to even
    for m in (Market.create("ETH-USDT", Asset("ETH", 18), Asset("USDT", 6), "0.01", "0.01"),
              Market.create("BTC-USDT", Asset("BTC", 8), Asset("USDT", 2), "0.5", "0.02"),
              Market.create("X-Y", Asset("X", 0), Asset("Y", 0), "5", "10")):
        formats = Formats(m, limit=50)  # also across the memo's restarts
        for _ in range(3):
            for v in [0, 1, 7, 10**20, *(rng.randrange(0, 10**rng.randrange(1, 21)) for _ in range(100))]:
                assert formats.price(v) == m.format_price(v)
                assert formats.quantity(v) == m.format_quantity(v)
                assert formats.quote(v) == format_units(v, m.quote_precision)
    page = world.logs.exchange.select_notifications(start=0, limit=10_000, inclusive_of_start=False)
    for n in page:
        lazy = LazyOutcome(world.logs, n)
        names = lazy.names()
        decoded = lazy.decoded()
        want = {f["type"].encode() for f in decoded.facts}
        want |= {decoded.command.encode()} if decoded.command else set()
        want |= {b"postings"} if any("postings" in f for f in decoded.facts) else set()
        assert names == want, (n.id, names, want)
        first = LazyOutcome(world.logs, n)  # decoded first (all models at once): from its facts
        first.decoded()
        assert first.names() == want, n.id


def test_orjson_decoding_gives_what_the_standard_decoder_gives(world: World) -> None:
    """Every reader of stored bytes (the engine, the projections, the auditor) decodes them with
    ``engine.jsondecode.loads``: orjson, except where it would differ (integers beyond 64 bits,
    which it turns into floats; what it refuses). Every stored outcome and request of a busy
    log, value by value and type by type, is what ``json`` gives; and the odd cases too."""
    import json

    import orjson

    from engine.jsondecode import has_float, loads

    def exact(value: object) -> str:  # a float where an int should be shows as 1e+19
        return json.dumps(value, sort_keys=True)

    page = world.logs.exchange.select_notifications(start=0, limit=100_000, inclusive_of_start=False)
    requests = world.logs.requests.select_notifications(start=0, limit=100_000, inclusive_of_start=False)
    assert page and requests
    long_numbers = 0
    for n in [*page, *requests]:
        long_numbers += has_float(orjson.loads(n.state))
        assert exact(loads(n.state)) == exact(json.loads(n.state)), n.id
    assert 0 < long_numbers < len(page)  # both paths taken (18-decimal ETH passes 64 bits)
    # a number orjson would turn into a float, and ones it refuses, go to the standard decoder
    n = page[-1]
    for odd in (b'"x":123456789012345678901234567890', b'"x":"\\ud800"', b'"x":-9223372036854775809',
                b'"x":NaN', b'"x":[1,{"y":1e400}]', b'"x":0.1', b'"x":[[12345678901234567890123]]'):
        state = n.state.replace(b'"facts":[', b'"facts":[{"type":"Odd",' + odd + b'},', 1)
        assert exact(loads(state)) == exact(json.loads(state))
        assert loads(state)["facts"][0]["type"] == "Odd"


def recorded(o: RecordedOutcome) -> tuple[Any, ...]:
    """Every field of an outcome as ``Logs`` decodes it, in order (a projection's
    ``DecodedOutcome.fields()``)."""
    return tuple(getattr(o, f.name) for f in fields(RecordedOutcome))


def test_direct_pages_give_what_the_library_gives(world: World) -> None:
    """The projections read both logs' pages themselves on PostgreSQL (``projections.pages``):
    page by page, with odd page sizes and a stop, the same positions and the same decoded
    outcomes and requests as the library's notifications decoded by ``Logs``."""
    from projections.outcomes import LazyOutcome
    from projections.pages import StoredRow

    logs = world.logs
    sources = log_sources(logs)
    want_outcomes = [logs.decode_outcome(n) for n in
                     logs.exchange.select_notifications(start=0, limit=100_000, inclusive_of_start=False)]
    want_requests = [logs.decode_request(n) for n in
                     logs.requests.select_notifications(start=0, limit=100_000, inclusive_of_start=False)]
    assert len(want_outcomes) > 500 and len(want_requests) > 500
    for source, want in ((sources["exchange"], want_outcomes), (sources["requests"], want_requests)):
        stop = want[len(want) * 2 // 3].position
        for until in (None, stop):
            got: list[Any] = []
            after = 0
            while page := source.read(after, 97, until):
                got += page
                after = page[-1].position
            expected = want if until is None else [e for e in want if e.position <= until]
            assert [e.position for e in got] == [e.position for e in expected]
            if source.name == "exchange":
                kinds = {type(e._n) for e in got}
                assert kinds == ({StoredRow} if world.store.dialect == "postgres" else kinds - {StoredRow})
                got = [e.decoded().fields() for e in got if isinstance(e, LazyOutcome)]
                expected = [recorded(o) for o in expected]
            assert got == expected


def test_rows_off_the_fast_path_are_decoded_by_the_library(read_backend: Any) -> None:
    """A stored request or outcome with another transcoded value than its timestamp (here a
    UUID, which the library's transcoder stores as ``{"_type_": "uuid_hex", …}``) is decoded by
    ``Logs`` through the library, so a projection sees it as every other reader does."""
    import json
    from datetime import UTC, datetime

    from eventsourcing.persistence import StoredEvent

    from engine.log import EXCHANGE_STREAM_ID, Outcome
    from projections.outcomes import LazyOutcome

    logs = build_logs(read_backend, create_tables=False)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    plain, odd = uuid.uuid4(), uuid.uuid4()
    logs.append_request(plain, "a", {"command": "PlaceOrder", "price": "1.00"}, t0)
    logs.append_request(odd, None, {"command": "CancelOrder", "order_id": odd}, t0 + timedelta(seconds=1))
    state = {
        "timestamp": {"_type_": "datetime_iso", "_data_": t0.isoformat()}, "request_id": str(odd),
        "request_position": 2, "actor": None, "command": "CancelOrder",
        "facts": [{"type": "CancelRejected", "order_id": {"_type_": "uuid_hex", "_data_": odd.hex}}],
        "prev_hash": "0" * 64, "hash": "1" * 64,
    }
    logs.commit([StoredEvent(EXCHANGE_STREAM_ID, 1, Outcome.TOPIC, json.dumps(state).encode())], 2)
    sources = log_sources(logs)
    requests = sources["requests"].read(0, 10, None)
    assert requests == [logs.decode_request(n) for n in
                        logs.requests.select_notifications(start=0, limit=10, inclusive_of_start=False)]
    assert requests[1].command["order_id"] == odd  # the library's UUID, not its stored form
    [outcome] = sources["exchange"].read(0, 10, None)
    assert isinstance(outcome, LazyOutcome)
    [n] = logs.exchange.select_notifications(start=0, limit=10, inclusive_of_start=False)
    assert outcome.decoded().fields() == recorded(logs.decode_outcome(n))
    assert outcome.decoded().facts[0]["order_id"] == odd


def test_decoding_ahead_leaves_an_undecodable_outcome_to_the_projection_that_needs_it(
    world: World,
) -> None:
    """Once a page was mostly decoded, the runner decodes the next one first; an outcome that
    does not decode is then left undecoded (no error), and only a projection that needs it
    stops at it, as before."""
    from projections.outcomes import LazyOutcome, mostly_decoded
    from projections.pages import StoredRow

    state = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00"}, nope'
    broken = LazyOutcome(world.logs, StoredRow(1, None, 1, "spotex:Outcome", state))
    broken.decode_ahead()
    assert not broken.is_decoded and broken.names() is not None
    with pytest.raises(ValueError):
        broken.decoded()
    page = log_sources(world.logs)["exchange"].read(0, 20, None)
    assert not mostly_decoded(page)
    for e in page[:18]:
        e.decode_ahead()
    assert mostly_decoded(page)
