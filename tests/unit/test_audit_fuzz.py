"""Random flows over every command the engine knows, recorded by the real engine, audit clean;
and the same flows with one random fact field changed do not.

This keeps the auditor's own ledger and book models honest against the engine (quote-quantity
market buys, FOK and IOC, post-only, the three self-trade prevention modes, amends that keep or
lose priority, halts, delists, withdrawals that complete or fail, transfers, duplicates)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from domain.commands import COMMANDS, request_id_for, user_id_for
from engine.audit import Audit
from engine.exchange import Exchange, RequestRecord
from engine.log import GENESIS_HASH, RecordedOutcome, outcome_hash

USERS = ("alice", "bob", "carol")
MARKETS = ("BTC-USDT", "ETH-USDT")


def random_flow(seed: int, count: int) -> list[RequestRecord]:
    rnd = random.Random(seed)
    out: list[RequestRecord] = []
    orders: list[tuple[str, str]] = []
    withdrawals: list[str] = []
    delisted = ""

    def add(actor: str | None, name: str, **fields: Any) -> str:
        try:
            command = COMMANDS[name](**fields)
        except ValueError:
            return ""
        rid = request_id_for(command, actor) or uuid.UUID(int=rnd.getrandbits(128), version=4)
        position = len(out) + 1
        out.append(
            RequestRecord(
                str(rid), position, f"2024-01-01T00:00:00.{position:06d}+00:00", actor, command.to_log()
            )
        )
        return str(rid)

    admin = add(None, "RegisterUser", username="admin", password_hash="x", roles=["admin"])
    for symbol, precision in (("BTC", 8), ("ETH", 8), ("USDT", 6)):
        add(admin, "ListAsset", symbol=symbol, precision=precision)
    for market in MARKETS:
        base = market.split("-")[0]
        add(
            admin,
            "ListMarket",
            symbol=market,
            base=base,
            quote="USDT",
            tick_size="0.01",
            lot_size="0.0001",
            min_notional="1",
            maker_fee=rnd.choice(["0", "0.001"]),
            taker_fee=rnd.choice(["0.002", "0.0015"]),
        )
    for name in USERS:
        add(None, "RegisterUser", username=name, password_hash="x")
        for asset, amount in (("USDT", "50000"), ("BTC", "2"), ("ETH", "20")):
            add(admin, "Deposit", username=name, asset=asset, amount=amount, reference=f"{asset}-0")
    while len(out) < count:
        user = user_id_for(rnd.choice(USERS))
        market = rnd.choice(MARKETS)
        r = rnd.random()
        side = rnd.choice(("buy", "sell"))
        price = f"{rnd.randint(990, 1010) * (30 if market == 'BTC-USDT' else 2)}.{rnd.randint(0, 99):02d}"
        quantity = f"{rnd.randint(1, 400) / 10_000:.4f}"
        if r < 0.45:
            oid = add(
                user,
                "PlaceOrder",
                market=market,
                side=side,
                type="limit",
                price=price,
                quantity=quantity,
                time_in_force=rnd.choice(["GTC", "GTC", "GTC", "IOC", "FOK"]),
                post_only=rnd.random() < 0.1,
                client_order_id=rnd.choice([None, None, f"c{rnd.randint(0, 40)}"]),
                self_trade_prevention=rnd.choice(["cancel_resting", "cancel_taker", "cancel_both"]),
            )
            orders.append((oid, user))
        elif r < 0.52:
            add(user, "PlaceOrder", market=market, side=side, type="market", quantity=quantity)
        elif r < 0.56:
            add(
                user,
                "PlaceOrder",
                market=market,
                side="buy",
                type="market",
                quote_quantity=str(rnd.randint(1, 90)),
            )
        elif r < 0.68 and orders:
            oid, owner = rnd.choice(orders)
            fields = rnd.choice(
                [{"quantity": quantity}, {"price": price}, {"price": price, "quantity": quantity}]
            )
            add(owner, "AmendOrder", order_id=uuid.UUID(oid), **fields)
        elif r < 0.78 and orders:
            oid, owner = orders.pop(rnd.randrange(len(orders)))
            add(owner if rnd.random() < 0.9 else user, "CancelOrder", order_id=uuid.UUID(oid))
        elif r < 0.8:
            add(user, "CancelAllOrders", market=rnd.choice([None, market]))
        elif r < 0.84:
            withdrawals.append(
                add(
                    user,
                    "RequestWithdrawal",
                    asset="USDT",
                    amount=str(rnd.randint(1, 900)),
                    reference=f"w{rnd.randint(0, 30)}",
                )
            )
        elif r < 0.87 and withdrawals:
            add(
                admin,
                rnd.choice(["CompleteWithdrawal", "FailWithdrawal"]),
                withdrawal_id=uuid.UUID(withdrawals.pop(rnd.randrange(len(withdrawals)))),
            )
        elif r < 0.9:
            add(
                user,
                "Transfer",
                to_username=rnd.choice(USERS),
                asset="BTC",
                amount="0.01",
                reference=f"t{rnd.randint(0, 30)}",
            )
        elif r < 0.91:  # a short halt: cancel-only for a few requests, then trading again
            add(admin, "HaltMarket", market=market)
            if orders:
                oid, owner = orders.pop()
                add(owner, "CancelOrder", order_id=uuid.UUID(oid))  # a cancel is allowed while halted
            add(user, "PlaceOrder", market=market, side=side, type="limit", price=price, quantity=quantity)
            add(admin, "ResumeMarket", market=market)
        elif len(out) > count * 0.9 and not delisted:
            delisted = add(admin, "DelistMarket", market="ETH-USDT")
        elif r < 0.95:
            name = rnd.choice(USERS)
            add(
                admin,
                "Deposit",
                username=name,
                asset="USDT",
                amount="1000",
                reference=f"d{rnd.randint(0, 20)}",
            )
    return out


def record(requests: list[RequestRecord]) -> list[RecordedOutcome]:
    ex, out, prev = Exchange(), [], GENESIS_HASH
    for seq, r in enumerate(requests, 1):
        facts = ex.execute(r)
        assert ex.check_invariants() == []
        name = r.command["command"]
        digest = outcome_hash(prev, seq, r.request_id, r.position, r.time, r.actor, name, facts)
        out.append(
            RecordedOutcome(seq, seq, r.time, r.request_id, r.position, r.actor, name, facts, prev, digest)
        )
        prev = digest
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_flows_audit_clean(seed: int) -> None:
    requests = random_flow(seed, 600)
    outcomes = record(requests)
    run = Audit()
    assert list(run.run(requests, outcomes)) == []
    facts = run.report()["facts"]
    assert facts.get("TradeExecuted", 0) > 20 and facts.get("OrderAmended", 0) >= 3


@pytest.mark.parametrize("seed", range(6))
def test_a_changed_fact_field_is_always_caught_at_its_position(seed: int) -> None:
    rnd = random.Random(seed)
    requests = random_flow(seed, 300)
    outcomes = record(requests)
    i = rnd.choice([i for i, o in enumerate(outcomes) if o.facts and i > 20])
    fact = rnd.choice(outcomes[i].facts)
    key = rnd.choice([k for k in fact if k != "type"])
    value = fact[key]
    fact[key] = (value + 1) if type(value) is int else ([] if isinstance(value, list) else f"{value}x")
    found = list(Audit().run(requests, outcomes))
    assert found and found[0].position == outcomes[i].position
    assert {"hash_mismatch", "reexecution_mismatch"} <= {v.code for v in found}
