"""A seeded flow of requests through one ``Exchange``, printed as canonical JSON.

Run as a script by ``test_engine_determinism`` under different ``PYTHONHASHSEED`` values:

    python tests/unit/determinism_flow.py SEED REQUESTS

prints one line per request (the canonical JSON of its facts) and a last line ``state <hash>``.
The requests come from ``random.Random(SEED)`` only, so two runs must print the same bytes; if
the engine's output depended on set or hash order anywhere, the hash seed would show it. Ids are
uuids and usernames vary in length so that string hashes differ between seeds.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from decimal import Decimal

from domain import commands as c
from engine.exchange import Exchange, RequestRecord, canonical

USERS = ("ann", "bartholomew", "cy.z", "dmitri-k", "eve_0")
MARKETS = {  # symbol: (base, quote, tick, lot, mid ticks, fees)
    "BTC-USDT": ("BTC", "USDT", "1", "0.01", 100, ("0.001", "0.002")),
    "ETH-USDT": ("ETH", "USDT", "0.5", "0.1", 4000, ("0", "0.0025")),
    "ETH-BTC": ("ETH", "BTC", "0.0001", "0.1", 500, ("0.0005", "0.0005")),
}
ASSETS = {"BTC": 8, "ETH": 6, "USDT": 2}


def flow(seed: int, count: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    ex = Exchange()
    ids: dict[str, str] = {}
    orders: list[tuple[str, str]] = []  # (order id, user id) of every accepted order
    withdrawals: list[str] = []
    halted: dict[str, int] = {}  # market → position after which it is resumed
    position = 0

    def run(actor: str | None, command: c.Command) -> bytes:
        nonlocal position
        position += 1
        actor_id = None if actor is None else ids[actor]
        rid = str(c.request_id_for(command, actor_id) or c.derived_id("flow", str(seed), str(position)))
        time = f"2024-01-01T00:00:00.{position:06d}+00:00"
        facts = ex.execute(RequestRecord(rid, position, time, actor_id, command.to_log()))
        for fact in facts:
            if fact["type"] == "UserRegistered":
                ids[fact["username"]] = fact["user_id"]
            elif fact["type"] == "OrderAccepted":
                orders.append((fact["order_id"], fact["user_id"]))
            elif fact["type"] == "WithdrawalRequested":
                withdrawals.append(fact["withdrawal_id"])
        return canonical(facts)

    yield run(None, c.RegisterUser(username="root", password_hash="x", roles=["admin"]))
    for symbol, precision in ASSETS.items():
        yield run("root", c.ListAsset(symbol=symbol, precision=precision))
    for symbol, (base, quote, tick, lot, _, (maker, taker)) in MARKETS.items():
        yield run("root", c.ListMarket(
            symbol=symbol, base=base, quote=quote, tick_size=tick, lot_size=lot,
            maker_fee=maker, taker_fee=taker,
        ))  # fmt: skip
    for user in USERS:
        yield run(None, c.RegisterUser(username=user, password_hash="x"))
        for asset, amount in (("USDT", "20000"), ("BTC", "5"), ("ETH", "50")):
            yield run("root", c.Deposit(username=user, asset=asset, amount=amount, reference=f"seed-{asset}"))

    for _ in range(count):
        for symbol in [m for m, until in halted.items() if until <= position]:
            del halted[symbol]
            yield run("root", c.ResumeMarket(market=symbol))
        user = rnd.choice(USERS)
        symbol = rnd.choice(list(MARKETS))
        base, quote, tick, lot, mid, _ = MARKETS[symbol]
        price = str(Decimal(tick) * (mid + rnd.randint(-4, 4)))
        quantity = str(Decimal(lot) * rnd.randint(1, 30))
        stp = rnd.choice(["cancel_resting", "cancel_taker", "cancel_both"])
        kind = rnd.choices(
            ["limit", "market", "quote", "amend", "cancel", "cancel_all", "money", "status"],
            weights=[50, 8, 5, 10, 10, 2, 8, 1],
        )[0]
        command: c.Command
        if kind == "limit":
            command = c.PlaceOrder(
                market=symbol, side=rnd.choice(["buy", "sell"]), type="limit", price=price,
                quantity=quantity, time_in_force=rnd.choice(["GTC", "GTC", "IOC", "FOK"]),
                post_only=rnd.random() < 0.1, self_trade_prevention=stp,
            )  # fmt: skip
        elif kind == "market":
            command = c.PlaceOrder(
                market=symbol, side=rnd.choice(["buy", "sell"]), type="market", quantity=quantity,
                self_trade_prevention=stp,
            )
        elif kind == "quote":
            command = c.PlaceOrder(
                market=symbol, side="buy", type="market", self_trade_prevention=stp,
                quote_quantity=str(Decimal(rnd.randint(1, 50_000)).scaleb(-ASSETS[quote])),
            )  # fmt: skip
        elif kind in ("amend", "cancel") and orders:
            # mostly open orders (engine state read in its own deterministic order), by their owner
            open_orders = [(o.order_id, o.user_id) for o in ex.orders.values()]
            order_id, owner_id = rnd.choice(open_orders if open_orders and rnd.random() < 0.8 else orders)
            owner = next(name for name, uid in ids.items() if uid == owner_id)
            user = owner if rnd.random() < 0.9 else user
            if kind == "cancel":
                command = c.CancelOrder(order_id=order_id)
            else:
                new_price = price if rnd.random() < 0.5 else None
                command = c.AmendOrder(order_id=order_id, price=new_price, quantity=quantity)
        elif kind == "money":
            asset = rnd.choice(list(ASSETS))
            amount = str(Decimal(rnd.randint(1, 10_000)).scaleb(-ASSETS[asset]))
            ref = f"r{rnd.randint(1, 50)}"
            choice = rnd.randrange(4)
            if choice == 0:
                command = c.Deposit(username=user, asset=asset, amount=amount, reference=ref)
                user = "root"
            elif choice == 1:
                command = c.RequestWithdrawal(asset=asset, amount=amount, reference=ref)
            elif choice == 2 and withdrawals:
                wid = rnd.choice(withdrawals)
                ending = c.CompleteWithdrawal if rnd.random() < 0.5 else c.FailWithdrawal
                command, user = ending(withdrawal_id=wid), "root"
            else:
                to = rnd.choice(USERS)
                command = c.Transfer(to_username=to, asset=asset, amount=amount, reference=ref)
        elif kind == "status":  # a short halt, resumed a few requests later (or a refused resume)
            if symbol not in halted and rnd.random() < 0.7:
                halted[symbol] = position + rnd.randint(3, 30)
                command = c.HaltMarket(market=symbol)
            else:
                command = c.ResumeMarket(market=symbol)
            user = "root"
        else:
            command = c.CancelAllOrders(market=rnd.choice([None, symbol]))
        yield run(user, command)

    yield run("root", c.DelistMarket(market="ETH-BTC"))
    violations = ex.check_invariants()
    if violations:
        raise SystemExit(f"invariants broken: {violations}")
    yield f"state {ex.state_hash()}".encode()


def main() -> None:
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    out = sys.stdout.buffer
    for line in flow(seed, count):
        out.write(line + b"\n")


if __name__ == "__main__":
    main()
