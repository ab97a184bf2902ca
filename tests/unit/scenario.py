"""A given/when/then harness for the engine: requests in, facts out, invariants after every step.

A ``Scenario`` owns one ``Exchange`` bootstrapped with an admin, three assets, two markets and
three traders. Requests are written with small builders (``alice.buy("100", "0.5", "bid")``,
``ops.deposit("alice", "USDT", "1000")``) so a test reads as the rule it checks:

    s.given(ops.deposit("bob", "BTC", "1"), bob.sell("100", "0.5", "ask"))
    then = s.when(alice.buy("101", "0.5", "bid"))
    assert then.trades == [("ask", "bid", 100, 50)]

Orders are named by their client order id; names are unique within a scenario and facts are
reported with names instead of uuids. After every request the harness checks
``check_invariants() == []``, that a second ``Exchange`` folding the recorded facts (through a
JSON round trip, as they come back from the store) has the same ``state_hash()``, and that an
``Exchange`` restored from a JSON snapshot taken just before the request decides the same facts.

Market fixtures (chosen so amounts are easy to compute by hand):

- ``BTC-USDT``: BTC 8 decimals, USDT 2; tick 1, lot 0.01 (one lot = 1,000,000 BTC units, one
  tick × one lot = 1 USDT unit, so ``cost = ticks × lots`` cents); maker fee 0.1 %, taker 0.2 %.
- ``ETH-USDT``: ETH 6 decimals; tick 0.5, lot 0.1 (tick × lot = 5 cents); no fees.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from domain import commands as c
from engine.exchange import Exchange, Fact, RequestRecord, canonical

BTC_USDT = "BTC-USDT"
ETH_USDT = "ETH-USDT"
REJECTIONS = ("OrderRejected", "AmendRejected", "CancelRejected", "RequestRejected")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Req:
    """A request not yet executed: who (a username, or None for the operator) and what."""

    actor: str | None
    command: c.Command
    name: str | None = None  # the order/withdrawal name it registers, if any


class Then:
    """The facts of one request, with order ids rendered as the scenario's names."""

    def __init__(self, scenario: Scenario, facts: list[Fact]) -> None:
        self.scenario = scenario
        self.facts = facts

    @property
    def types(self) -> list[str]:
        return [f["type"] for f in self.facts]

    @property
    def trades(self) -> list[tuple[str, str, int, int]]:
        """``(maker, taker, price ticks, lots)`` in execution order."""
        n = self.scenario.name_of
        return [
            (n(f["maker_order_id"]), n(f["taker_order_id"]), f["price"], f["quantity"])
            for f in self.facts
            if f["type"] == "TradeExecuted"
        ]

    @property
    def closed(self) -> dict[str, tuple[str, str]]:
        """``{order: (status, reason)}`` for every OrderClosed, in order."""
        return {
            self.scenario.name_of(f["order_id"]): (f["status"], f["reason"])
            for f in self.facts
            if f["type"] == "OrderClosed"
        }

    @property
    def booked(self) -> dict[str, int]:
        """``{order: remaining lots}`` for every OrderBooked."""
        return {
            self.scenario.name_of(f["order_id"]): f["remaining"]
            for f in self.facts
            if f["type"] == "OrderBooked"
        }

    def one(self, fact_type: str, **match: Any) -> Fact:
        """The single fact of ``fact_type`` whose fields equal ``match`` (order names allowed)."""
        found = [f for f in self.facts if f["type"] == fact_type and self._matches(f, match)]
        assert len(found) == 1, f"expected one {fact_type} {match}, got {found} in {self.types}"
        return found[0]

    def _matches(self, fact: Fact, match: dict[str, Any]) -> bool:
        for key, want in match.items():
            have = fact.get(key)
            if key.endswith("order_id") and isinstance(want, str) and want in self.scenario.ids:
                want = self.scenario.ids[want]
            if have != want:
                return False
        return True


class Actor:
    """Builds the requests of one user; order names become client order ids."""

    def __init__(self, scenario: Scenario, username: str | None) -> None:
        self.s = scenario
        self.username = username  # None: the operator (requests with no actor)

    @property
    def user_id(self) -> str:
        assert self.username is not None, "the operator has no user id"
        return self.s.user_ids[self.username]

    def _req(self, command: c.Command, name: str | None = None) -> Req:
        if name is not None:  # its id is fixed by the name (a client order id or a reference)
            self.s.name(name, str(c.request_id_for(command, self.s.actor_id(self.username))))
        return Req(self.username, command, name)

    # -- orders ------------------------------------------------------------------------------

    def limit(
        self,
        side: str,
        price: str,
        quantity: str,
        name: str,
        *,
        market: str = BTC_USDT,
        tif: str = "GTC",
        post_only: bool = False,
        stp: str = "cancel_resting",
    ) -> Req:
        cmd = c.PlaceOrder(
            market=market, side=side, type="limit", price=price, quantity=quantity,
            time_in_force=tif, post_only=post_only, client_order_id=name,
            self_trade_prevention=stp,
        )  # fmt: skip
        return self._req(cmd, name)

    def buy(self, price: str, quantity: str, name: str, **kw: Any) -> Req:
        return self.limit("buy", price, quantity, name, **kw)

    def sell(self, price: str, quantity: str, name: str, **kw: Any) -> Req:
        return self.limit("sell", price, quantity, name, **kw)

    def market(
        self,
        side: str,
        name: str,
        *,
        quantity: str | None = None,
        quote: str | None = None,
        market: str = BTC_USDT,
        stp: str = "cancel_resting",
    ) -> Req:
        cmd = c.PlaceOrder(
            market=market, side=side, type="market", quantity=quantity, quote_quantity=quote,
            client_order_id=name, self_trade_prevention=stp,
        )  # fmt: skip
        return self._req(cmd, name)

    def amend(self, name: str, *, price: str | None = None, quantity: str | None = None) -> Req:
        return self._req(c.AmendOrder(order_id=self.s.order_id(name), price=price, quantity=quantity))

    def cancel(self, name: str) -> Req:
        return self._req(c.CancelOrder(order_id=self.s.order_id(name)))

    def cancel_all(self, market: str | None = None) -> Req:
        return self._req(c.CancelAllOrders(market=market))

    # -- money -------------------------------------------------------------------------------

    def withdraw(self, asset: str, amount: str, reference: str) -> Req:
        return self._req(c.RequestWithdrawal(asset=asset, amount=amount, reference=reference), reference)

    def transfer(self, to: str, asset: str, amount: str, reference: str) -> Req:
        return self._req(c.Transfer(to_username=to, asset=asset, amount=amount, reference=reference))

    # -- what admins do (allowed or not depends on the actor's roles) ------------------------

    def deposit(self, username: str, asset: str, amount: str, reference: str | None = None) -> Req:
        reference = reference or f"dep-{self.s.next_ref()}"
        return self._req(c.Deposit(username=username, asset=asset, amount=amount, reference=reference))

    def list_asset(self, symbol: str, precision: int) -> Req:
        return self._req(c.ListAsset(symbol=symbol, precision=precision))

    def list_market(self, symbol: str, tick: str, lot: str, **kw: str) -> Req:
        """``kw``: min_notional, maker_fee, taker_fee; base and quote default to the symbol's."""
        base, quote = symbol.split("-")
        kw = {"base": base, "quote": quote, **kw}
        cmd = c.ListMarket(symbol=symbol, tick_size=tick, lot_size=lot, **kw)
        return self._req(cmd)

    def halt(self, market: str = BTC_USDT) -> Req:
        return self._req(c.HaltMarket(market=market))

    def resume(self, market: str = BTC_USDT) -> Req:
        return self._req(c.ResumeMarket(market=market))

    def delist(self, market: str = BTC_USDT) -> Req:
        return self._req(c.DelistMarket(market=market))

    def complete(self, withdrawal: str) -> Req:
        return self._req(c.CompleteWithdrawal(withdrawal_id=self.s.ids[withdrawal]))

    def fail(self, withdrawal: str) -> Req:
        return self._req(c.FailWithdrawal(withdrawal_id=self.s.ids[withdrawal]))

    def register(self, username: str, roles: list[str] | None = None) -> Req:
        cmd = c.RegisterUser(username=username, password_hash="x", roles=roles or ["trader"])
        return self._req(cmd)


class Scenario:
    """One exchange, its requests and the facts they produced."""

    def __init__(self, *, min_notional: str = "0") -> None:
        self.ex = Exchange()
        self.replica = Exchange()  # folds the recorded facts only
        self.position = 0
        self.facts: list[Fact] = []
        self.user_ids: dict[str, str] = {}
        self.ids: dict[str, str] = {}  # order / withdrawal name → id
        self.names: dict[str, str] = {}
        self._refs = 0
        self.booted = False  # the bootstrap is the same in every test: no snapshot checks there
        self.operator = Actor(self, None)  # the server's own bootstrap: requests with no actor
        self.admin = self.actor("admin")
        self.given(
            self.operator.register("admin", ["admin"]),
            self.admin.list_asset("BTC", 8),
            self.admin.list_asset("USDT", 2),
            self.admin.list_asset("ETH", 6),
            self.admin.list_market(
                BTC_USDT, "1", "0.01", maker_fee="0.001", taker_fee="0.002", min_notional=min_notional
            ),
            self.admin.list_market(ETH_USDT, "0.5", "0.1"),
            *(self.operator.register(name) for name in ("alice", "bob", "carol")),
        )
        self.alice, self.bob, self.carol = (self.actor(n) for n in ("alice", "bob", "carol"))
        self.booted = True

    def actor(self, username: str | None) -> Actor:
        return Actor(self, username)

    def next_ref(self) -> int:
        self._refs += 1
        return self._refs

    # -- ids ---------------------------------------------------------------------------------

    def order_id(self, name: str) -> uuid.UUID:
        """The id of a named order; a name never used gives an id no order has."""
        return uuid.UUID(self.ids[name]) if name in self.ids else c.derived_id("unknown", name)

    def actor_id(self, username: str | None) -> str | None:
        return None if username is None else self.user_ids.get(username, username)

    def name(self, name: str, some_id: str) -> None:
        assert self.ids.get(name, some_id) == some_id, f"{name!r} names two things"
        self.ids[name] = some_id
        self.names[some_id] = name

    def name_of(self, some_id: str) -> str:
        return self.names.get(some_id, some_id)

    # -- running -----------------------------------------------------------------------------

    def run(self, req: Req) -> list[Fact]:
        """Execute one request, record its facts, and check the invariants and the replay."""
        actor_id = self.actor_id(req.actor)
        self.position += 1
        rid = c.request_id_for(req.command, actor_id) or c.derived_id("request", str(self.position))
        request_id = str(rid)
        time = (T0 + timedelta(seconds=self.position)).isoformat()
        record = RequestRecord(request_id, self.position, time, actor_id, req.command.to_log())
        restored = Exchange.from_state(json.loads(canonical(self.ex.to_state()))) if self.booted else None
        facts = self.ex.execute(record)
        if restored is not None:
            assert restored.execute(record) == facts, f"an exchange restored from a snapshot differs on {req}"
        for fact in facts:
            if fact["type"] == "UserRegistered":
                self.user_ids[fact["username"]] = fact["user_id"]
        self.facts += facts
        violations = self.ex.check_invariants()
        assert violations == [], f"after {req}: {violations}"
        self.replica.apply_all(json.loads(canonical(facts)))
        assert self.replica.state_hash() == self.ex.state_hash(), f"replay differs after {req}"
        return facts

    def given(self, *reqs: Req) -> None:
        """Prior requests; each must be accepted (no rejection fact)."""
        for req in reqs:
            facts = self.run(req)
            rejected = [f for f in facts if f["type"] in REJECTIONS]
            assert not rejected, f"given {req} was rejected: {rejected}"

    def when(self, req: Req) -> Then:
        return Then(self, self.run(req))

    def when_rejected(self, req: Req, reason: str) -> Fact:
        """The request is refused with ``reason``: one rejection fact and no change at all."""
        before_hash, before_money = self.ex.state_hash(), self.money()
        facts = self.run(req)
        assert len(facts) == 1 and facts[0]["type"] in REJECTIONS, facts
        assert facts[0]["reason"] == reason, facts[0]
        assert "postings" not in facts[0]
        assert self.ex.state_hash() == before_hash
        assert self.money() == before_money
        return facts[0]

    # -- reading state -----------------------------------------------------------------------

    def balance(self, username: str, asset: str) -> tuple[int, int]:
        """``(available, frozen)`` in the asset's smallest units; system accounts start with @."""
        account = username if username.startswith("@") else self.user_ids[username]
        return self.ex.ledger.available(account, asset), self.ex.ledger.frozen(account, asset)

    def money(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {k: (v[0], v[1]) for k, v in self.ex.ledger.balances.items()}

    def is_open(self, name: str) -> bool:
        return self.ids[name] in self.ex.orders

    def remaining(self, name: str) -> int:
        return self.ex.orders[self.ids[name]].remaining

    def queue(self, market: str = BTC_USDT, side: str = "sell") -> list[tuple[int, list[str]]]:
        """The book side as ``[(price ticks, [order names in FIFO order])]``, best first."""
        book = self.ex.books[market]
        levels = book.asks if side == "sell" else book.bids
        sign = 1 if side == "sell" else -1
        return [(sign * key, [self.name_of(oid) for oid in level.orders]) for key, level in levels.items()]
