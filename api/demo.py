"""``spotex serve --demo``: list BTC, ETH, USDT and two markets, fund alice and bob, and run a
small market maker so a new user sees a live book.

Everything goes through the same command path as the api (requests appended to the log, the
engine decides), with idempotency keys, so a restart with ``--demo`` appends nothing new. The
maker is a trader of its own (``maker``, with a random password nobody needs); its mid prices
take a seeded random walk, so two runs quote the same prices in the same order.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Literal

from api.bootstrap import BuiltinUser, register_builtin_users
from domain.commands import (
    CancelAllOrders,
    Command,
    Deposit,
    ListAsset,
    ListMarket,
    PlaceOrder,
    derived_id,
    request_id_for,
    user_id_for,
)
from engine.log import Logs, RequestConflict

BUY: Literal["buy"] = "buy"
SELL: Literal["sell"] = "sell"

log = logging.getLogger("spotex.demo")

# USDT keeps 8 decimals so that tick 0.01 × lot 0.00001 of BTC-USDT is a whole number of its units.
ASSETS = (("BTC", 8), ("ETH", 8), ("USDT", 8))
MARKETS = (
    ListMarket(symbol="BTC-USDT", base="BTC", quote="USDT", tick_size="0.01", lot_size="0.00001",
               min_notional="1", maker_fee="0.001", taker_fee="0.002"),
    ListMarket(symbol="ETH-USDT", base="ETH", quote="USDT", tick_size="0.01", lot_size="0.0001",
               min_notional="1", maker_fee="0.001", taker_fee="0.002"),
)
FUNDS = {
    "alice": (("USDT", "100000"), ("BTC", "2"), ("ETH", "20")),
    "bob": (("USDT", "100000"), ("BTC", "2"), ("ETH", "20")),
    "maker": (("USDT", "10000000"), ("BTC", "500"), ("ETH", "5000")),
}
MIDS = {"BTC-USDT": Decimal("30000.00"), "ETH-USDT": Decimal("2000.00")}
MAKER = "maker"


def _append(logs: Logs, command: Command, actor: str | None, now: datetime) -> None:
    request_id = request_id_for(command, actor) or uuid.uuid4()
    with contextlib.suppress(RequestConflict):  # appended by an earlier --demo start
        logs.append_request(request_id, actor, command.to_log(), now)


def set_up(logs: Logs, now: datetime) -> None:
    """List the demo assets and markets and fund the traders (idempotent)."""
    for symbol, precision in ASSETS:
        _append(logs, ListAsset(symbol=symbol, precision=precision), None, now)
    for market in MARKETS:
        _append(logs, market, None, now)
    register_builtin_users(logs, [BuiltinUser(MAKER, ("trader",), secrets.token_urlsafe(24))], now)
    for username, funds in FUNDS.items():
        for asset, amount in funds:
            deposit = Deposit(username=username, asset=asset, amount=amount, reference=f"demo-{asset}")
            _append(logs, deposit, None, now)


class MarketMaker(threading.Thread):
    """Every ``period`` seconds, per market: cancel its quotes, move the mid, quote three levels."""

    def __init__(self, logs: Logs, clock: Callable[[], datetime], notify: Callable[[], None],
                 stop: threading.Event, period: float = 2.0, seed: int = 7) -> None:
        super().__init__(name="spotex-demo-maker", daemon=True)
        self.logs, self.clock, self.notify, self.stop = logs, clock, notify, stop
        self.period = period
        self.random = random.Random(seed)
        self.mids = dict(MIDS)
        self.actor = user_id_for(MAKER)
        self.cycle = 0

    def quote(self, market: str) -> list[Command]:
        mid = self.mids[market]
        step = (mid / 2000).quantize(Decimal("0.01"))  # 5 bp of the mid
        mid = max(step * 10, mid + step * self.random.randint(-2, 2))
        self.mids[market] = mid
        lot = Decimal("0.001") if market.startswith("BTC") else Decimal("0.01")
        commands: list[Command] = [CancelAllOrders(market=market)]
        for level in (1, 2, 3):
            size = str(lot * self.random.randint(5, 50))
            for side, sign in ((BUY, -1), (SELL, 1)):
                coid = f"mm-{market}-{self.cycle}-{side}-{level}"
                price = str(mid + sign * step * level)
                commands.append(PlaceOrder(market=market, side=side, type="limit", price=price,
                                           quantity=size, client_order_id=coid))
        return commands

    def run(self) -> None:
        # Client order ids carry the cycle: resume numbering after an earlier run's quotes.
        while self._used(self.cycle):
            self.cycle += 1000
        while not self.stop.is_set():
            try:
                for market in sorted(self.mids):
                    for command in self.quote(market):
                        _append(self.logs, command, self.actor, self.clock())
                self.notify()
            except Exception:
                log.exception("demo market maker: cannot quote; trying again")
            self.cycle += 1
            self.stop.wait(self.period)

    def _used(self, cycle: int) -> bool:
        coid = f"mm-BTC-USDT-{cycle}-buy-1"
        return self.logs.request(derived_id("order", self.actor, coid)) is not None
