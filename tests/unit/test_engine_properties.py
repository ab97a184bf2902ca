"""The engine against a naive reference exchange, driven by random requests (hypothesis).

``Reference`` below is written from the rules, not from the engine: resting orders are one plain
list, priority is ``sorted()`` on (price, arrival), money is a dict of ``[available, frozen]``,
fees are ``ceil(Fraction)``. It predicts, for every request, the rejection reason or what the
order holds when accepted or amended, the trades (maker, taker, price, lots), the orders closed
(status, reason, released) and booked (remaining lots).

After every step the machine checks that the engine agrees with it (outcome, every balance,
every open order, every book queue), that ``check_invariants() == []``, that each asset sums to
zero over all accounts, that folding the recorded facts (JSON round-tripped) into a fresh
``Exchange`` gives the same ``state_hash()``, and that an exchange restored from a JSON
snapshot taken before the step has the same state and produces the same facts.

CI runs 60 examples of 40 steps; ``SPOTEX_HYPOTHESIS_PROFILE=long`` runs the long profile's
examples with 100 steps each.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)

from domain import commands as c
from engine.exchange import Exchange, Fact, RequestRecord, canonical

REJECTIONS = ("OrderRejected", "AmendRejected", "CancelRejected", "RequestRejected")
USERS = ("user0", "user1", "user2")
ASSETS = {"BTC": 8, "ETH": 6, "USDT": 2}
CUSTODY, FEES = "@custody", "@fees"


# -- the markets, described once for both the engine and the reference -------------------------


@dataclass(frozen=True)
class Spec:
    symbol: str
    base: str
    quote: str
    tick: str
    lot: str
    min_notional: str
    maker_fee: str
    taker_fee: str
    mid: int  # ticks

    @property
    def lot_units(self) -> int:
        return int(Decimal(self.lot).scaleb(ASSETS[self.base]))

    @property
    def notional(self) -> int:
        """Quote units in one tick × one lot."""
        return int((Decimal(self.tick) * Decimal(self.lot)).scaleb(ASSETS[self.quote]))

    @property
    def min_notional_units(self) -> int:
        return int(Decimal(self.min_notional).scaleb(ASSETS[self.quote]))

    def price_text(self, ticks: int) -> str:
        return str(Decimal(self.tick) * ticks)

    def qty_text(self, lots: int) -> str:
        return str(Decimal(self.lot) * lots)

    def fee(self, amount: int, rate: str) -> int:
        return math.ceil(Fraction(amount) * Fraction(Decimal(rate)))


BTC_USDT = Spec("BTC-USDT", "BTC", "USDT", "1", "0.01", "1", "0.001", "0.002", mid=100)
ETH_USDT = Spec("ETH-USDT", "ETH", "USDT", "0.5", "0.1", "0", "0", "0.0025", mid=4000)
SPECS = {m.symbol: m for m in (BTC_USDT, ETH_USDT)}


def units_text(units: int, asset: str) -> str:
    return str(Decimal(units).scaleb(-ASSETS[asset]))


# -- the reference exchange ---------------------------------------------------------------------


@dataclass
class RefOrder:
    oid: str
    user: str
    m: Spec
    side: str
    price: int | None  # None: a market order
    qty: int | None  # None: a market buy by quote amount
    budget: int | None
    tif: str
    post_only: bool
    stp: str
    accepted: int  # acceptance order (cancel-all closes in this order)
    hold: int = 0
    filled: int = 0
    spent: int = 0
    seq: int = 0  # time priority: when it was (last) booked

    @property
    def remaining(self) -> int:
        return 0 if self.qty is None else self.qty - self.filled

    @property
    def hold_asset(self) -> str:
        return self.m.quote if self.side == "buy" else self.m.base


@dataclass
class Outcome:
    """What one request does, in the shape both sides are compared in."""

    reason: str | None = None
    accepted: list[tuple[str, int]] = field(default_factory=list)  # order, hold
    amended: list[tuple[str, str, int]] = field(default_factory=list)  # order, priority, hold
    trades: list[tuple[str, str, int, int]] = field(default_factory=list)  # maker, taker, price, lots
    closes: list[tuple[str, str, str, int]] = field(default_factory=list)  # order, status, reason, released
    booked: list[tuple[str, int]] = field(default_factory=list)  # order, remaining


def outcome_of(facts: list[Fact]) -> Outcome:
    rejected = [f for f in facts if f["type"] in REJECTIONS]
    assert len(rejected) <= 1 and (not rejected or len(facts) == 1), facts
    def of(fact_type: str, *fields: str) -> list[Any]:
        return [tuple(f[k] for k in fields) for f in facts if f["type"] == fact_type]

    return Outcome(
        rejected[0]["reason"] if rejected else None,
        of("OrderAccepted", "order_id", "hold"),
        of("OrderAmended", "order_id", "priority", "hold"),
        of("TradeExecuted", "maker_order_id", "taker_order_id", "price", "quantity"),
        of("OrderClosed", "order_id", "status", "reason", "released"),
        of("OrderBooked", "order_id", "remaining"),
    )


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Reference:
    """A deliberately simple model of the exchange's rules."""

    def __init__(self) -> None:
        self.money: dict[tuple[str, str], list[int]] = {}
        self.status = {symbol: "trading" for symbol in SPECS}
        self.resting: list[RefOrder] = []
        self.clock = 0
        self.keys: set[str] = set()
        self.withdrawals: dict[str, list[Any]] = {}  # id → [user, asset, amount, status]
        self.out = Outcome()

    def run(self, action: Any, *args: Any) -> Outcome:
        self.out = Outcome()
        try:
            action(*args)
        except Refused as refused:
            assert self.out == Outcome(), "refused after changing something"
            self.out.reason = refused.reason
        return self.out

    # -- money ---------------------------------------------------------------------------------

    def move(self, account: str, asset: str, available: int, frozen: int = 0) -> None:
        row = self.money.setdefault((account, asset), [0, 0])
        row[0] += available
        row[1] += frozen

    def available(self, account: str, asset: str) -> int:
        return self.money.get((account, asset), [0, 0])[0]

    def deposit(self, user: str, asset: str, amount: int, ref: str) -> None:
        key = f"deposit:{user}:{ref}"
        if key in self.keys:
            raise Refused("duplicate")
        self.keys.add(key)
        self.move(CUSTODY, asset, -amount)
        self.move(user, asset, amount)

    def withdraw(self, wid: str, user: str, asset: str, amount: int, ref: str) -> None:
        key = f"withdrawal:{user}:{ref}"
        if key in self.keys:
            raise Refused("duplicate")
        if amount > self.available(user, asset):
            raise Refused("insufficient_funds")
        self.keys.add(key)
        self.move(user, asset, -amount, amount)
        self.withdrawals[wid] = [user, asset, amount, "pending"]

    def end_withdrawal(self, wid: str, completed: bool) -> None:
        if wid not in self.withdrawals:
            raise Refused("unknown_withdrawal")
        w = self.withdrawals[wid]
        if w[3] != "pending":
            raise Refused("withdrawal_not_pending")
        user, asset, amount = w[0], w[1], w[2]
        w[3] = "completed" if completed else "failed"
        if completed:
            self.move(user, asset, 0, -amount)
            self.move(CUSTODY, asset, amount)
        else:
            self.move(user, asset, amount, -amount)

    def transfer(self, user: str, to: str, asset: str, amount: int, ref: str) -> None:
        if user == to:
            raise Refused("self_transfer")
        key = f"transfer:{user}:{ref}"
        if key in self.keys:
            raise Refused("duplicate")
        if amount > self.available(user, asset):
            raise Refused("insufficient_funds")
        self.keys.add(key)
        self.move(user, asset, -amount)
        self.move(to, asset, amount)

    # -- market status -------------------------------------------------------------------------

    def set_status(self, symbol: str, to: str) -> None:
        allowed = {"halted": ("trading",), "trading": ("halted",), "delisted": ("trading", "halted")}
        if self.status[symbol] not in allowed[to]:
            raise Refused("market_not_trading")
        if to == "delisted":
            for side in ("buy", "sell"):
                for order in self.queue(symbol, side):
                    self.close(order, "cancelled", "market_delisted")
        self.status[symbol] = to

    # -- the book ------------------------------------------------------------------------------

    def queue(self, symbol: str, side: str) -> list[RefOrder]:
        """Resting orders of one side, best price first, then first come first served."""
        orders = [o for o in self.resting if o.m.symbol == symbol and o.side == side]
        sign = -1 if side == "buy" else 1
        return sorted(orders, key=lambda o: (sign * o.price, o.seq))  # type: ignore[operator]

    def crosses(self, side: str, price: int | None, maker: RefOrder) -> bool:
        if price is None:
            return True
        return maker.price <= price if side == "buy" else maker.price >= price  # type: ignore[operator]

    def walk(self, taker: RefOrder) -> tuple[list[tuple[RefOrder, int]], str | None]:
        """What the taker would do, best maker first: ``(maker, lots)`` with 0 = cancel the maker."""
        steps: list[tuple[RefOrder, int]] = []
        want = taker.remaining if taker.qty is not None else None
        left = None if taker.budget is None else taker.budget - taker.spent
        other = "sell" if taker.side == "buy" else "buy"
        for maker in self.queue(taker.m.symbol, other):
            if not self.crosses(taker.side, taker.price, maker):
                break
            if maker.user == taker.user:
                if taker.stp == "cancel_taker":
                    return steps, "self_trade"
                steps.append((maker, 0))
                if taker.stp == "cancel_both":
                    return steps, "self_trade"
                continue
            lots = maker.remaining if want is None else min(want, maker.remaining)
            if left is not None:
                unit = maker.price * taker.m.notional  # type: ignore[operator]
                if left // unit < lots:
                    lots = left // unit
                    if lots:
                        steps.append((maker, lots))
                    return steps, "budget_spent"
                left -= lots * unit
            steps.append((maker, lots))
            if want is not None:
                want -= lots
                if want == 0:
                    break
        return steps, None

    def trade(self, maker: RefOrder, taker: RefOrder, lots: int) -> None:
        m = taker.m
        base = lots * m.lot_units
        quote = lots * maker.price * m.notional  # type: ignore[operator]
        buyer, seller = (taker, maker) if taker.side == "buy" else (maker, taker)
        buyer_fee = m.fee(base, m.taker_fee if buyer is taker else m.maker_fee)
        seller_fee = m.fee(quote, m.taker_fee if seller is taker else m.maker_fee)
        # the buyer's hold is at its own limit price (a market buy holds what it pays)
        used = quote if buyer.price is None else lots * buyer.price * m.notional
        self.move(buyer.user, m.quote, used - quote, -used)
        buyer.hold -= used
        self.move(buyer.user, m.base, base - buyer_fee)
        self.move(seller.user, m.base, 0, -base)
        seller.hold -= base
        self.move(seller.user, m.quote, quote - seller_fee)
        self.move(FEES, m.base, buyer_fee)
        self.move(FEES, m.quote, seller_fee)
        maker.filled += lots
        taker.filled += lots
        taker.spent += quote
        self.out.trades.append((maker.oid, taker.oid, maker.price, lots))  # type: ignore[arg-type]

    def close(self, order: RefOrder, status: str, reason: str) -> None:
        self.out.closes.append((order.oid, status, reason, order.hold))
        self.move(order.user, order.hold_asset, order.hold, -order.hold)
        order.hold = 0
        if order in self.resting:
            self.resting.remove(order)

    def book(self, order: RefOrder) -> None:
        self.clock += 1
        order.seq = self.clock
        self.resting.append(order)
        self.out.booked.append((order.oid, order.remaining))

    def match(self, taker: RefOrder) -> None:
        steps, stop = self.walk(taker)
        for maker, lots in steps:
            if lots == 0:
                self.close(maker, "cancelled", "self_trade")
                continue
            self.trade(maker, taker, lots)
            if maker.remaining == 0:
                self.close(maker, "filled", "filled")
        if taker.qty is not None and taker.remaining == 0:
            self.close(taker, "filled", "filled")
        elif stop == "self_trade":
            self.close(taker, "cancelled", "self_trade")
        elif stop == "budget_spent" or (taker.budget is not None and taker.hold == 0):
            # a budget that could not pay for a single lot bought nothing: that is no fill
            self.close(taker, "filled" if taker.filled else "expired", "budget_spent")
        elif taker.price is None:
            self.close(taker, "expired", "no_liquidity")
        elif taker.tif != "GTC":
            self.close(taker, "expired", "time_in_force")
        else:
            self.book(taker)

    # -- orders --------------------------------------------------------------------------------

    def place(self, o: RefOrder) -> None:
        m = o.m
        if self.status[m.symbol] != "trading":
            raise Refused("market_not_trading")
        if o.price is not None:
            assert o.qty is not None
            if o.price * o.qty * m.notional < m.min_notional_units:
                raise Refused("min_notional")
            other = "sell" if o.side == "buy" else "buy"
            if o.post_only and any(self.crosses(o.side, o.price, r) for r in self.queue(m.symbol, other)):
                raise Refused("would_take")
            if o.tif == "FOK" and sum(lots for _, lots in self.walk(o)[0]) < o.qty:
                raise Refused("fok_not_filled")
            hold = o.price * o.qty * m.notional if o.side == "buy" else o.qty * m.lot_units
        elif o.budget is not None:
            if o.budget < m.min_notional_units:
                raise Refused("min_notional")
            hold = o.budget
        elif o.side == "buy":
            hold = sum(lots * maker.price * m.notional for maker, lots in self.walk(o)[0])  # type: ignore[operator]
        else:
            hold = o.qty * m.lot_units  # type: ignore[operator]
        if hold > self.available(o.user, o.hold_asset):
            raise Refused("insufficient_funds")
        o.hold = hold
        self.move(o.user, o.hold_asset, -hold, hold)
        self.out.accepted.append((o.oid, hold))
        self.match(o)

    def own_open(self, oid: str, user: str) -> RefOrder:
        for order in self.resting:
            if order.oid == oid and order.user == user:
                return order
        raise Refused("unknown_order")

    def amend(self, oid: str, user: str, price: int | None, qty: int | None) -> None:
        o = self.own_open(oid, user)
        m = o.m
        if self.status[m.symbol] != "trading":
            raise Refused("market_not_trading")
        assert o.price is not None and o.qty is not None
        price = o.price if price is None else price
        qty = o.qty if qty is None else qty
        if qty <= o.filled:
            raise Refused("invalid_quantity")
        if price * qty * m.notional < m.min_notional_units:
            raise Refused("min_notional")
        kept = price == o.price and qty <= o.qty
        other = "sell" if o.side == "buy" else "buy"
        crossing = any(self.crosses(o.side, price, r) for r in self.queue(m.symbol, other))
        if not kept and o.post_only and crossing:
            raise Refused("would_take")
        remaining = qty - o.filled
        hold = price * remaining * m.notional if o.side == "buy" else remaining * m.lot_units
        if hold - o.hold > self.available(o.user, o.hold_asset):
            raise Refused("insufficient_funds")
        self.move(o.user, o.hold_asset, o.hold - hold, hold - o.hold)
        o.hold, o.price, o.qty = hold, price, qty
        self.out.amended.append((o.oid, "kept" if kept else "lost", hold))
        if not kept:
            self.resting.remove(o)
            self.match(o)

    def cancel(self, oid: str, user: str) -> None:
        self.close(self.own_open(oid, user), "cancelled", "user")

    def cancel_all(self, user: str, symbol: str | None) -> None:
        mine = [o for o in self.resting if o.user == user and symbol in (None, o.m.symbol)]
        for order in sorted(mine, key=lambda o: o.accepted):
            self.close(order, "cancelled", "user")


# -- the state machine --------------------------------------------------------------------------

prices = st.integers(-4, 4)  # ticks from the market's mid
lots = st.integers(1, 25)
markets = st.sampled_from(["BTC-USDT", "BTC-USDT", "BTC-USDT", "ETH-USDT"])
sides = st.sampled_from(["buy", "sell"])
users = st.sampled_from(USERS)
stps = st.sampled_from(["cancel_resting", "cancel_taker", "cancel_resting", "cancel_both"])
refs = st.sampled_from(["r1", "r2", "r3", "r4"])
assets = st.sampled_from(sorted(ASSETS))
amounts = st.integers(1, 200_000)
by_owner = st.sampled_from([True] * 5 + [False])  # False: another user tries it


class EngineMachine(RuleBasedStateMachine):
    orders = Bundle("orders")
    withdrawals = Bundle("withdrawals")

    def __init__(self) -> None:
        super().__init__()
        self.ex = Exchange()
        self.ref = Reference()
        self.facts: list[Fact] = []
        self.replica = Exchange()
        self.position = 0
        self.accepted = 0
        self.ids: dict[str, str] = {}  # username → user id
        self.started = False  # past the setup
        self.state: dict[str, Any] | None = None  # ex.to_state(), when nothing changed since

    # -- running one request on the engine, the snapshot copy and the reference --------------

    def request(self, actor: str | None, command: c.Command) -> tuple[str, list[Fact]]:
        """Execute on the engine, and on an exchange restored from a JSON snapshot taken just before."""
        self.position += 1
        rid = str(c.derived_id("property", str(self.position)))
        actor_id = None if actor is None else self.ids[actor]
        record = RequestRecord(rid, self.position, "2024-01-01T00:00:00+00:00", actor_id, command.to_log())
        restored = None
        if self.started:  # the setup is the same in every example: no snapshot checks there
            state = self.state if self.state is not None else self.ex.to_state()
            snapshot = json.loads(canonical(state))
            restored = Exchange.from_state(snapshot)
            assert restored.to_state() == snapshot, "the snapshot round trip changed the state"
        self.state = None
        facts = self.ex.execute(record)
        if restored is not None:
            assert restored.execute(record) == facts, "the restored exchange decided otherwise"
        self.facts += facts
        self.replica.apply_all(json.loads(canonical(facts)))
        return rid, facts

    def check(self, facts: list[Fact], expected: Outcome) -> None:
        got = outcome_of(facts)
        assert got == expected, f"engine {got}\nreference {expected}"
        event(f"rejected: {got.reason}" if got.reason else f"{len(got.trades)} trade(s)")
        for _, status, reason, _ in got.closes:
            event(f"closed: {status} {reason}")

    def bootstrap(self, actor: str | None, command: c.Command) -> None:
        _, facts = self.request(actor, command)
        assert not [f for f in facts if f["type"] in REJECTIONS], facts
        for f in facts:
            if f["type"] == "UserRegistered":
                self.ids[f["username"]] = f["user_id"]

    @initialize(target=orders)
    def setup(self) -> MultipleResults[tuple[str, str]]:
        self.bootstrap(None, c.RegisterUser(username="admin", password_hash="x", roles=["admin"]))
        for symbol, precision in ASSETS.items():
            self.bootstrap("admin", c.ListAsset(symbol=symbol, precision=precision))
        for m in SPECS.values():
            self.bootstrap("admin", c.ListMarket(
                symbol=m.symbol, base=m.base, quote=m.quote, tick_size=m.tick, lot_size=m.lot,
                min_notional=m.min_notional, maker_fee=m.maker_fee, taker_fee=m.taker_fee,
            ))  # fmt: skip
        for user in USERS:
            self.bootstrap(None, c.RegisterUser(username=user, password_hash="x"))
        for user in USERS:  # a starting balance, so that most orders are affordable
            for asset, amount in (("USDT", 1_000_000), ("BTC", 100_000_000), ("ETH", 5_000_000)):
                self.deposit(user, asset, amount, f"start-{asset}")
        book = []  # a starting book: each user bids and asks 1, 2 or 3 ticks from the mid
        for away, user in enumerate(USERS, start=1):
            for market in SPECS:
                for side, offset in (("buy", -away), ("sell", away)):
                    order = self.limit(user, market, side, offset, 5 * away, "GTC", False, "cancel_resting")
                    book.append(order)
        self.started = True
        return multiple(*book)

    # -- money rules -------------------------------------------------------------------------

    @rule(user=users, asset=assets, amount=st.integers(1, 500_000), ref=refs)
    def deposit(self, user: str, asset: str, amount: int, ref: str) -> None:
        cmd = c.Deposit(username=user, asset=asset, amount=units_text(amount, asset), reference=ref)
        _, facts = self.request("admin", cmd)
        self.check(facts, self.ref.run(self.ref.deposit, self.ids[user], asset, amount, ref))

    @rule(target=withdrawals, user=users, asset=assets, amount=st.integers(1, 3_000_000), ref=refs)
    def withdraw(self, user: str, asset: str, amount: int, ref: str) -> str:
        cmd = c.RequestWithdrawal(asset=asset, amount=units_text(amount, asset), reference=ref)
        rid, facts = self.request(user, cmd)
        self.check(facts, self.ref.run(self.ref.withdraw, rid, self.ids[user], asset, amount, ref))
        return rid

    @rule(wid=withdrawals, completed=st.booleans())
    def end_withdrawal(self, wid: str, completed: bool) -> None:
        cmd = c.CompleteWithdrawal if completed else c.FailWithdrawal
        _, facts = self.request("admin", cmd(withdrawal_id=wid))
        self.check(facts, self.ref.run(self.ref.end_withdrawal, wid, completed))

    @rule(user=users, to_offset=st.sampled_from([1, 2, 0]), asset=assets, amount=amounts, ref=refs)
    def transfer(self, user: str, to_offset: int, asset: str, amount: int, ref: str) -> None:
        to = USERS[(USERS.index(user) + to_offset) % len(USERS)]  # offset 0: a transfer to oneself
        cmd = c.Transfer(to_username=to, asset=asset, amount=units_text(amount, asset), reference=ref)
        _, facts = self.request(user, cmd)
        expected = self.ref.run(self.ref.transfer, self.ids[user], self.ids[to], asset, amount, ref)
        self.check(facts, expected)

    # -- order rules -------------------------------------------------------------------------

    def place(self, user: str, m: Spec, cmd: c.PlaceOrder, **order: Any) -> tuple[str, str]:
        rid, facts = self.request(user, cmd)
        self.accepted += 1
        ref_order = RefOrder(
            rid, self.ids[user], m, cmd.side, stp=cmd.self_trade_prevention, accepted=self.accepted,
            tif=cmd.time_in_force if cmd.type == "limit" else "IOC", post_only=cmd.post_only, **order,
        )  # fmt: skip
        self.check(facts, self.ref.run(self.ref.place, ref_order))
        return rid, user

    @rule(
        target=orders, user=users, market=markets, side=sides, price=prices,
        qty=lots, tif=st.sampled_from(["GTC", "GTC", "GTC", "IOC", "FOK"]), post_only=st.booleans(),
        stp=stps,
    )  # fmt: skip
    def limit(
        self, user: str, market: str, side: str, price: int, qty: int, tif: str, post_only: bool, stp: str
    ) -> tuple[str, str]:
        m = SPECS[market]
        ticks = m.mid + price
        cmd = c.PlaceOrder(
            market=market, side=side, type="limit", price=m.price_text(ticks), quantity=m.qty_text(qty),
            time_in_force=tif, post_only=post_only and tif == "GTC", self_trade_prevention=stp,
        )  # fmt: skip
        return self.place(user, m, cmd, price=ticks, qty=qty, budget=None)

    @rule(target=orders, user=users, market=markets, side=sides, away=st.integers(0, 3), qty=lots)
    def resting_limit(self, user: str, market: str, side: str, away: int, qty: int) -> tuple[str, str]:
        """A GTC order on its own side of the mid, to build a book for the others to meet."""
        return self.limit(user, market, side, -away - 1 if side == "buy" else away + 1, qty, "GTC", False,
                          "cancel_resting")  # fmt: skip

    @rule(
        target=orders, user=users, market=markets, side=sides, through=st.integers(1, 5), qty=lots,
        tif=st.sampled_from(["GTC", "IOC", "FOK"]), stp=stps,
    )  # fmt: skip
    def crossing_limit(
        self, user: str, market: str, side: str, through: int, qty: int, tif: str, stp: str
    ) -> tuple[str, str]:
        """An order priced through the mid into the resting levels, to take from the book."""
        return self.limit(user, market, side, through if side == "buy" else -through, qty, tif, False, stp)

    @rule(target=orders, user=users, market=markets, side=sides, qty=lots, stp=stps)
    def market_by_quantity(self, user: str, market: str, side: str, qty: int, stp: str) -> tuple[str, str]:
        m = SPECS[market]
        cmd = c.PlaceOrder(
            market=market, side=side, type="market", quantity=m.qty_text(qty), self_trade_prevention=stp
        )
        return self.place(user, m, cmd, price=None, qty=qty, budget=None)

    @rule(target=orders, user=users, market=markets, budget=st.integers(50, 20_000), stp=stps)
    def market_buy_by_quote(self, user: str, market: str, budget: int, stp: str) -> tuple[str, str]:
        m = SPECS[market]
        cmd = c.PlaceOrder(
            market=market, side="buy", type="market", quote_quantity=units_text(budget, m.quote),
            self_trade_prevention=stp,
        )
        return self.place(user, m, cmd, price=None, qty=None, budget=budget)

    def actor_for(self, order: tuple[str, str], by_owner: bool) -> str:
        owner = order[1]
        return owner if by_owner else USERS[(USERS.index(owner) + 1) % len(USERS)]

    @rule(
        order=orders, by_owner=by_owner,
        price=st.none() | prices, qty=st.none() | st.integers(1, 30),
    )  # fmt: skip
    def amend(self, order: tuple[str, str], by_owner: bool, price: int | None, qty: int | None) -> None:
        if price is None and qty is None:
            qty = 1
        actor = self.actor_for(order, by_owner)
        oid = order[0]
        placed = self.ex.orders.get(oid)
        m = SPECS[placed.market] if placed is not None else BTC_USDT
        ticks = None if price is None else m.mid + price
        cmd = c.AmendOrder(
            order_id=oid,
            price=None if ticks is None else m.price_text(ticks),
            quantity=None if qty is None else m.qty_text(qty),
        )
        _, facts = self.request(actor, cmd)
        self.check(facts, self.ref.run(self.ref.amend, oid, self.ids[actor], ticks, qty))

    @rule(
        order=orders, by_owner=by_owner,
        everything=st.sampled_from([None] * 6 + ["BTC-USDT", "ETH-USDT", "all markets"]),
    )  # fmt: skip
    def cancel(self, order: tuple[str, str], by_owner: bool, everything: str | None) -> None:
        """Cancel one order, or now and then (``everything``) all the actor's orders."""
        actor = self.actor_for(order, by_owner)
        if everything is None:
            _, facts = self.request(actor, c.CancelOrder(order_id=order[0]))
            self.check(facts, self.ref.run(self.ref.cancel, order[0], self.ids[actor]))
            return
        market = None if everything == "all markets" else everything
        _, facts = self.request(actor, c.CancelAllOrders(market=market))
        self.check(facts, self.ref.run(self.ref.cancel_all, self.ids[actor], market))

    # -- market lifecycle --------------------------------------------------------------------

    @rule(market=markets, to=st.sampled_from(["trading"] * 6 + ["halted", "delisted"]))
    def change_status(self, market: str, to: str) -> None:
        """Mostly resumes (so halts are short); delisting is final, so only ETH-USDT is delisted."""
        if to == "delisted":
            market = "ETH-USDT"
        cmd = {"halted": c.HaltMarket, "trading": c.ResumeMarket, "delisted": c.DelistMarket}[to]
        _, facts = self.request("admin", cmd(market=market))
        self.check(facts, self.ref.run(self.ref.set_status, market, to))

    # -- after every step --------------------------------------------------------------------

    @invariant()
    def engine_invariants_hold(self) -> None:
        assert self.ex.check_invariants() == []

    @invariant()
    def every_asset_sums_to_zero(self) -> None:
        sums: dict[str, int] = {}
        for (_, asset), (available, frozen) in self.ex.ledger.balances.items():
            sums[asset] = sums.get(asset, 0) + available + frozen
        assert all(total == 0 for total in sums.values()), sums

    @invariant()
    def balances_agree_with_the_reference(self) -> None:
        engine = {k: tuple(v) for k, v in self.ex.ledger.balances.items() if v != [0, 0]}
        reference = {k: tuple(v) for k, v in self.ref.money.items() if v != [0, 0]}
        assert engine == reference

    @invariant()
    def books_agree_with_the_reference(self) -> None:
        for symbol, book in self.ex.books.items():
            state = book.state()
            assert state["bids"] == [o.oid for o in self.ref.queue(symbol, "buy")]
            assert state["asks"] == [o.oid for o in self.ref.queue(symbol, "sell")]
        engine = {oid: (o.price, o.remaining, o.hold) for oid, o in self.ex.orders.items()}
        reference = {o.oid: (o.price, o.remaining, o.hold) for o in self.ref.resting}
        assert engine == reference

    @invariant()
    def replaying_the_facts_gives_the_same_state(self) -> None:
        self.state = self.ex.to_state()  # kept for the next request's snapshot
        assert self.replica.to_state() == self.state  # the hashes are compared at the end

    def teardown(self) -> None:
        fresh = Exchange()
        fresh.apply_all(json.loads(canonical(self.facts)))
        assert fresh.state_hash() == self.replica.state_hash() == self.ex.state_hash()


LONG = os.environ.get("SPOTEX_HYPOTHESIS_PROFILE") == "long"
# the long profile takes tens of minutes: it opts out of the suite's per-test timeout
TestEngineAgainstReference = pytest.mark.timeout(0 if LONG else 600)(EngineMachine.TestCase)
TestEngineAgainstReference.settings = settings(
    max_examples=settings.default.max_examples if LONG else 60,
    stateful_step_count=100 if LONG else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- a trade's postings: built directly, as merging them would ---------------------------------

_ACCOUNTS = st.sampled_from(["alice", "bob", "@fees"])
_ASSETS = st.sampled_from(["BTC", "USDT"])
_DELTAS = st.integers(min_value=-(10**20), max_value=10**20) | st.just(0)


@given(_ACCOUNTS, _ACCOUNTS, _ASSETS, _ASSETS, st.lists(_DELTAS, min_size=7, max_size=7))
def test_a_trades_postings_are_what_merging_its_six_rows_gives(
        t: str, m: str, paid: str, got: str, d: list[int]) -> None:
    """Given any taker, maker and pair of assets (the same ones included) and any deltas (zeros
    included), ``_trade_postings`` gives exactly ``merge_postings`` of the trade's six rows, in
    the same order: the bytes of a trade's outcome do not depend on which path built them."""
    from engine.trading import _trade_postings, merge_postings

    rows = ((t, paid, d[0], d[1]), (t, got, d[2], 0), (m, got, 0, d[3]), (m, paid, d[4], 0),
            ("@fees", got, d[5], 0), ("@fees", paid, d[6], 0))
    assert _trade_postings(t, m, paid, got, d[0], d[1], d[2], d[3], d[4], d[5], d[6]) == merge_postings(*rows)
