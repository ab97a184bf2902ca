"""Fixtures for the projection tests: a real engine producing real logs, on SQLite and PostgreSQL.

- ``read_backend`` (params ``sqlite``, ``postgres``): ``Settings`` for a fresh store — SQLite
  files in a tmp dir, or a fresh database on the real PostgreSQL server (``make_postgres_database``
  from tests/conftest.py) — with the event store and read tables migrated.
- ``ExchangeFlow``: appends requests with ``Logs.append_request`` and runs the real
  ``Sequencer`` over them: ``bootstrap()`` lists BTC/USDT/ETH and two markets and funds traders,
  ``trade(n)`` sends a seeded random mix of orders, cancels, amends, withdrawals; times advance
  by a few minutes per request with some jitter (api clocks disagree a little), so candles and the
  24 h ticker window see many buckets and out-of-order times.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from domain import commands as c
from engine.log import Logs
from engine.sequencer import Sequencer
from projections.migrate import migrate_read_store
from projections.store import ReadStore, open_read_store
from spotex.config import Settings
from spotex.wiring import build_logs

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TRADERS = ("alice", "bob", "carol", "dave")


class ExchangeFlow:
    """Requests in, the real engine deciding them; ids and times deterministic (seeded)."""

    def __init__(self, logs: Logs, seed: int = 1, step: timedelta = timedelta(minutes=3)) -> None:
        self.logs = logs
        self.sequencer = Sequencer(logs)
        self.rng = random.Random(seed)
        self.t = T0
        self.step = step
        self.n = 0
        self.orders: list[tuple[str, str]] = []  # (username, order id) of placed orders

    @staticmethod
    def user_id(username: str | None) -> str | None:
        return c.user_id_for(username) if username else None

    def send(self, actor: str | None, command: c.Command, jitter: bool = True) -> str:
        """Append one request; returns its id (= event id = the order/withdrawal id)."""
        actor_id = self.user_id(actor)
        rid = c.request_id_for(command, actor_id) or uuid.UUID(int=self.rng.getrandbits(128), version=4)
        self.n += 1
        when = self.t
        if jitter:
            when += timedelta(seconds=self.rng.randint(-40, 40))
        self.logs.append_request(rid, actor_id, command.to_log(), when)
        self.t += self.step
        return str(rid)

    def run(self) -> int:
        """Let the engine decide everything appended; returns the exchange log's head."""
        while self.sequencer.step():
            pass
        return self.logs.last_outcome_position()

    def bootstrap(self) -> None:
        self.send(None, c.RegisterUser(username="admin", password_hash="hash-admin", roles=["admin"]))
        for name in TRADERS:
            self.send(None, c.RegisterUser(username=name, password_hash=f"hash-{name}"))
        self.send("admin", c.ListAsset(symbol="BTC", precision=8))
        self.send("admin", c.ListAsset(symbol="USDT", precision=6))
        self.send("admin", c.ListAsset(symbol="ETH", precision=18))
        self.send("admin", c.ListMarket(symbol="BTC-USDT", base="BTC", quote="USDT", tick_size="0.5",
                                        lot_size="0.001", maker_fee="0.001", taker_fee="0.002"))
        self.send("admin", c.ListMarket(symbol="ETH-USDT", base="ETH", quote="USDT", tick_size="0.01",
                                        lot_size="0.01", min_notional="1"))
        for name in TRADERS:
            self.send("admin", c.Deposit(username=name, asset="USDT", amount="1000000", reference="u1"))
            self.send("admin", c.Deposit(username=name, asset="BTC", amount="50", reference="b1"))
            # 18 decimals: 10^21 units, past 64-bit integers
            self.send("admin", c.Deposit(username=name, asset="ETH", amount="1000", reference="e1"))

    def place(self, user: str, market: str, side: str, price: str | None, quantity: str | None,
              **kw: Any) -> str:
        oid = self.send(user, c.PlaceOrder(market=market, side=side, type="limit" if price else "market",
                                           price=price, quantity=quantity, **kw))
        self.orders.append((user, oid))
        return oid

    def trade(self, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            user = rng.choice(TRADERS)
            market = rng.choice(("BTC-USDT", "BTC-USDT", "ETH-USDT"))
            side = rng.choice(("buy", "sell"))
            r = rng.random()
            if market == "BTC-USDT":
                price = str(Decimal(100) + Decimal(rng.randint(-12, 12)) / 2)
                qty = str(Decimal(rng.randint(1, 60)) / 1000)
            else:
                price = str(Decimal(2000) + Decimal(rng.randint(-300, 300)) / 100)
                qty = str(Decimal(rng.randint(1, 200)) / 100)
            if r < 0.55:
                tif = rng.choice(("GTC",) * 7 + ("IOC", "FOK"))
                self.place(user, market, side, price, qty, time_in_force=tif,
                           post_only=rng.random() < 0.05, client_order_id=f"c{self.n}")
            elif r < 0.63:
                self.place(user, market, side, None, qty)
            elif r < 0.65 and side == "buy":
                self.send(user, c.PlaceOrder(market=market, side="buy", type="market",
                                             quote_quantity=str(rng.randint(5, 200))))
            elif r < 0.78 and self.orders:
                owner, oid = rng.choice(self.orders)
                self.send(owner, c.CancelOrder(order_id=uuid.UUID(oid)))
            elif r < 0.88 and self.orders:
                owner, oid = rng.choice(self.orders)
                if rng.random() < 0.5:
                    self.send(owner, c.AmendOrder(order_id=uuid.UUID(oid), quantity=qty))
                else:
                    self.send(owner, c.AmendOrder(order_id=uuid.UUID(oid), price=price))
            elif r < 0.92:
                self.send(user, c.RequestWithdrawal(asset=rng.choice(("USDT", "BTC")),
                                                    amount=str(rng.randint(1, 3000)), reference=f"w{self.n}"))
            elif r < 0.95:
                self.send(user, c.Transfer(to_username=rng.choice(TRADERS), asset="USDT",
                                           amount=str(rng.randint(1, 50)), reference=f"t{self.n}"))
            elif r < 0.97:
                self.send(user, c.CancelAllOrders(market=market))
            else:
                self.send("admin", c.Deposit(username=user, asset="USDT", amount=str(rng.randint(1, 999)),
                                             reference=f"d{self.n}"))


@contextmanager
def fresh_backend(
    kind: str, tmp_dir: Path, make_postgres_database: Callable[[], AbstractContextManager[str]]
) -> Iterator[Settings]:
    """Settings for a fresh, migrated store (event store + read tables) of ``kind``."""
    if kind == "sqlite":
        settings = Settings(data_dir=tmp_dir / "data")
        _migrate(settings)
        yield settings
        return
    with make_postgres_database() as url:
        settings = Settings(database_url=url)
        _migrate(settings)
        yield settings


@pytest.fixture(params=["sqlite", "postgres"])
def read_backend(
    request: pytest.FixtureRequest, tmp_path: Path,
) -> Iterator[Settings]:
    """A fresh, migrated store on SQLite (tmp dir) or PostgreSQL (a fresh database)."""
    make = request.getfixturevalue("make_postgres_database") if request.param == "postgres" else None
    with fresh_backend(request.param, tmp_path, make) as settings:  # type: ignore[arg-type]
        yield settings


def _migrate(settings: Settings) -> None:
    build_logs(settings, create_tables=True)
    store = open_read_store(settings)
    try:
        migrate_read_store(store)
    finally:
        store.close()


@pytest.fixture
def opened(read_backend: Settings) -> Iterator[tuple[Settings, Logs, ReadStore]]:
    """(settings, logs, read store) on the fresh backend; the store is closed afterwards."""
    logs = build_logs(read_backend, create_tables=False)
    store = open_read_store(read_backend)
    yield read_backend, logs, store
    store.close()
