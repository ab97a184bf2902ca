"""The exchange's state and its single entry point, ``Exchange.execute(request) -> facts``.

The engine is the only writer of accounts, orders and books. ``execute`` decides what one
request does, reading state only; each fact it decides is applied at once through ``apply``,
which is the only code that changes state (so replaying recorded facts rebuilds the same state
without deciding anything again). Nothing here reads a clock, a random source or I/O: time and
ids come from the request. Iteration orders are insertion orders or sorted keys, never set or
hash orders, so the same requests give the same facts byte for byte under any PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from domain.ledger import (
    Ledger,
    Violation,
    check_conservation,
    check_holds,
    check_non_negative,
)
from domain.markets import Asset, Market
from domain.orders import Order
from engine.book import Book

Fact = dict[str, Any]


class RequestRecord:
    """One request as read from the requests log; read-only by convention.

    A plain class with its own ``__init__``, not a dataclass: compiled (setup.py), a dataclass's
    generated ``__init__`` stays interpreted (a frozen one calls ``object.__setattr__`` per
    field), and the audit makes one per request it reads."""

    __slots__ = ("actor", "command", "position", "request_id", "time")

    def __init__(
        self, request_id: str, position: int, time: str, actor: str | None, command: dict[str, Any]
    ) -> None:
        self.request_id, self.position, self.time = request_id, position, time
        self.actor, self.command = actor, command

    def _fields(self) -> tuple[str, int, str, str | None, dict[str, Any]]:
        return (self.request_id, self.position, self.time, self.actor, self.command)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestRecord):
            return NotImplemented
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        names = ("request_id", "position", "time", "actor", "command")
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True))
        return f"RequestRecord({fields})"


class Reject(Exception):
    """Raised by a handler before it emits anything: the request is refused, state unchanged."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class User:
    user_id: str
    username: str
    roles: list[str]


@dataclass(slots=True)
class Withdrawal:
    user_id: str
    asset: str
    amount: int
    status: str


class Exchange:
    """All state the engine decides on; see ``engine.handlers`` and ``engine.appliers``."""

    def __init__(self) -> None:
        self.assets: dict[str, Asset] = {}
        self.markets: dict[str, Market] = {}
        self.status: dict[str, str] = {}
        self.books: dict[str, Book] = {}
        self.orders: dict[str, Order] = {}  # open orders, in acceptance order
        self.user_orders: dict[str, dict[str, None]] = {}  # user → open order ids, in order
        self.ledger = Ledger()
        self.users: dict[str, User] = {}
        self.usernames: dict[str, str] = {}
        self.withdrawals: dict[str, Withdrawal] = {}
        self.keys: dict[str, None] = {}  # idempotency keys applied: references, client order ids
        self.next_trade_id = 1
        self._facts: list[Fact] | None = None
        # The dispatch tables, imported here (they import this module) once per Exchange: an
        # import inside execute and apply ran once per request and per fact.
        from engine.appliers import APPLIERS
        from engine.handlers import HANDLERS

        self._appliers, self._handlers = APPLIERS, HANDLERS

    # -- deciding ---------------------------------------------------------------------------

    def execute(self, request: RequestRecord) -> list[Fact]:
        """Decide and apply one request; returns its facts (a rejection is a fact too)."""
        facts: list[Fact] = []
        self._facts = facts
        try:
            name = request.command.get("command")
            handler = self._handlers.get(name) if isinstance(name, str) else None
            if handler is None:
                raise Reject("invalid_request", f"unknown command {name!r}")
            try:
                handler(self, request)
            except Reject as reject:
                from engine.handlers import rejection

                if facts:  # a handler must refuse before it changes anything
                    raise RuntimeError(f"rejection after facts in {name}") from reject
                self.emit(rejection(self, request, reject))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                from engine.handlers import rejection

                if facts:
                    raise
                self.emit(rejection(self, request, Reject("invalid_request", str(exc))))
        finally:
            self._facts = None
        return facts

    def emit(self, fact: Fact) -> None:
        """Record a decided fact and apply it at once, so later decisions see it."""
        assert self._facts is not None, "emit outside execute"
        self._facts.append(fact)
        self.apply(fact)

    # -- applying ---------------------------------------------------------------------------

    def apply(self, fact: Fact) -> None:
        """Change state as the fact says; facts were validated when they were decided."""
        self._appliers[fact["type"]](self, fact)

    def apply_all(self, facts: Iterable[Fact]) -> None:
        for fact in facts:
            self.apply(fact)

    # -- helpers used by handlers -----------------------------------------------------------

    def market(self, symbol: object) -> Market:
        market = self.markets.get(symbol) if isinstance(symbol, str) else None
        if market is None:
            raise Reject("unknown_market", f"market {symbol!r} is not listed")
        return market

    def asset(self, symbol: object) -> Asset:
        asset = self.assets.get(symbol) if isinstance(symbol, str) else None
        if asset is None:
            raise Reject("unknown_asset", f"asset {symbol!r} is not listed")
        return asset

    def user_by_name(self, username: object) -> User:
        user_id = self.usernames.get(username) if isinstance(username, str) else None
        if user_id is None:
            raise Reject("unknown_user", f"user {username!r} does not exist")
        return self.users[user_id]

    def require_actor(self, request: RequestRecord, role: str | None = None) -> str:
        actor = request.actor
        user = self.users.get(actor) if actor else None
        if user is None:
            raise Reject("unknown_user", "the request's user does not exist")
        if role is not None and role not in user.roles:
            raise Reject("not_allowed", f"only a user with the {role} role may do this")
        return user.user_id

    # -- checks -----------------------------------------------------------------------------

    def holds(self) -> dict[tuple[str, str], int]:
        held: dict[tuple[str, str], int] = {}
        for order in self.orders.values():
            key = (order.user_id, order.hold_asset)
            held[key] = held.get(key, 0) + order.hold
        for w in self.withdrawals.values():
            if w.status == "pending":
                key = (w.user_id, w.asset)
                held[key] = held.get(key, 0) + w.amount
        return held

    def check_invariants(self) -> list[Violation]:
        """Conservation, no negative balance, frozen = holds, books sound, orders consistent."""
        balances = self.ledger.balances
        out = check_conservation(balances) + check_non_negative(balances)
        out += check_holds(balances, self.holds())
        booked = 0
        for symbol in sorted(self.books):
            book = self.books[symbol]
            out += book.check()
            booked += sum(1 for _ in book.orders_in_priority())
        if booked != len(self.orders):
            out.append(Violation("open_orders", "*", f"{len(self.orders)} open, {booked} booked"))
        for order in self.orders.values():
            market = self.markets[order.market]
            want = (
                market.cost(order.price or 0, order.remaining)
                if order.side == "buy"
                else market.base_units(order.remaining)
            )
            if not order.booked or order.hold != want:
                out.append(
                    Violation("order_hold", order.order_id, f"holds {order.hold}, should {want}")
                )
        return out

    # -- snapshots and the state hash ------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this state stands, JSON-ready."""
        return {
            "assets": [[a.symbol, a.precision] for a in self.assets.values()],
            "markets": [m.listing() for m in self.markets.values()],
            "status": [[s, st] for s, st in self.status.items()],
            "users": [[u.user_id, u.username, u.roles] for u in self.users.values()],
            "balances": [[a, s, v[0], v[1]] for (a, s), v in sorted(self.ledger.balances.items())],
            "orders": [o.to_state() for o in self.orders.values()],
            "books": {s: b.state() for s, b in self.books.items()},
            "withdrawals": [
                [wid, w.user_id, w.asset, w.amount, w.status] for wid, w in self.withdrawals.items()
            ],
            "keys": list(self.keys),
            "next_trade_id": self.next_trade_id,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Exchange:
        from engine.appliers import list_market

        ex = cls()
        for symbol, precision in state["assets"]:
            ex.assets[symbol] = Asset(symbol, precision)
        for listing in state["markets"]:
            list_market(ex, listing)
        for symbol, status in state["status"]:
            ex.status[symbol] = status
        for user_id, username, roles in state["users"]:
            ex.users[user_id] = User(user_id, username, list(roles))
            ex.usernames[username] = user_id
        for account, asset, available, frozen in state["balances"]:
            ex.ledger.balances[(account, asset)] = [available, frozen]
        for row in state["orders"]:
            order = Order.from_state(row)
            order.booked = False
            ex.orders[order.order_id] = order
            ex.user_orders.setdefault(order.user_id, {})[order.order_id] = None
        for symbol, sides in state["books"].items():
            book = ex.books[symbol]
            for side in ("bids", "asks"):
                # The ids come best level first, in time priority within a level. Levels are
                # added worst first (each then lands at the best end of the sorted keys, where
                # inserting moves nothing): best first costs a move of every key per level,
                # seconds for a book of 100,000 levels. Within a level the order is kept.
                levels: list[list[Order]] = []
                price: int | None = None
                for oid in sides[side]:
                    order = ex.orders[oid]
                    if not levels or order.price != price:
                        levels.append([])
                        price = order.price
                    levels[-1].append(order)
                for level in reversed(levels):
                    for order in level:
                        book.add(order)
        for wid, user_id, asset, amount, status in state["withdrawals"]:
            ex.withdrawals[wid] = Withdrawal(user_id, asset, amount, status)
        ex.keys = dict.fromkeys(state["keys"])
        ex.next_trade_id = state["next_trade_id"]
        return ex

    def state_hash(self) -> str:
        return hashlib.sha256(canonical(self.to_state())).hexdigest()


def canonical(value: Any) -> bytes:
    """The one byte encoding used for hashes: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


Handler = Callable[[Exchange, RequestRecord], None]
Applier = Callable[[Exchange, Fact], None]
