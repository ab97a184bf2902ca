"""The auditor's own ledger and book folds, given facts written out in the test: what each
check accepts, and the violation code it gives when a fact breaks a rule."""

from __future__ import annotations

from typing import Any

from engine.audit_book import BookCheck
from engine.audit_ledger import LedgerCheck

Fact = dict[str, Any]
A, B = "alice-id", "bob-id"

LISTING: list[Fact] = [
    {"type": "AssetListed", "symbol": "BTC", "precision": 8},
    {"type": "AssetListed", "symbol": "USDT", "precision": 6},
    {"type": "MarketListed", "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01",
     "lot_size": "0.0001", "min_notional": "0", "maker_fee": "0.001", "taker_fee": "0.002"},
    {"type": "Deposited", "deposit_id": "d1", "user_id": A, "asset": "USDT", "amount": 10**11,
     "reference": "r1", "postings": [["@custody", "USDT", -(10**11), 0], [A, "USDT", 10**11, 0]]},
    {"type": "Deposited", "deposit_id": "d2", "user_id": B, "asset": "BTC", "amount": 10**8,
     "reference": "r1", "postings": [["@custody", "BTC", -(10**8), 0], [B, "BTC", 10**8, 0]]},
]


def accepted(oid: str, user: str, side: str, price: int, lots: int, coid: str | None = None) -> Fact:
    asset, hold = ("USDT", price * lots) if side == "buy" else ("BTC", lots * 10_000)
    return {"type": "OrderAccepted", "order_id": oid, "user_id": user, "client_order_id": coid,
            "market": "BTC-USDT", "side": side, "order_type": "limit", "price": price, "quantity": lots,
            "quote_quantity": None, "time_in_force": "GTC", "post_only": False,
            "self_trade_prevention": "cancel_resting", "hold_asset": asset, "hold": hold,
            "postings": [[user, asset, -hold, hold]]}


def booked(oid: str, side: str, price: int, lots: int) -> Fact:
    return {"type": "OrderBooked", "order_id": oid, "market": "BTC-USDT", "side": side, "price": price,
            "remaining": lots}


def trade(tid: int, maker: str, taker: str, price: int, lots: int, taker_limit: int) -> Fact:
    """Bob's sell rests (maker), Alice buys (taker), at the standard fees."""
    base, quote = lots * 10_000, price * lots  # one tick × one lot is 1 USDT unit
    taker_fee, maker_fee = -(-base * 2 // 1000), -(-quote // 1000)
    taker_used = taker_limit * lots
    return {"type": "TradeExecuted", "trade_id": tid, "market": "BTC-USDT", "price": price, "quantity": lots,
            "base_amount": base, "quote_amount": quote, "taker_side": "buy", "maker_order_id": maker,
            "maker_user_id": B, "taker_order_id": taker, "taker_user_id": A, "maker_fee": maker_fee,
            "maker_fee_asset": "USDT", "taker_fee": taker_fee, "taker_fee_asset": "BTC",
            "maker_hold_used": base, "taker_hold_used": taker_used,
            "postings": [[A, "USDT", taker_used - quote, -taker_used], [A, "BTC", base - taker_fee, 0],
                         [B, "BTC", 0, -base], [B, "USDT", quote - maker_fee, 0],
                         ["@fees", "BTC", taker_fee, 0], ["@fees", "USDT", maker_fee, 0]]}


def closed(oid: str, user: str, asset: str, released: int, status: str = "filled") -> Fact:
    postings = [[user, asset, released, -released]] if released else []
    return {"type": "OrderClosed", "order_id": oid, "user_id": user, "market": "BTC-USDT", "status": status,
            "reason": status, "released": released, "postings": postings}


def ledger(*outcomes: list[Fact]) -> list[str]:
    lc = LedgerCheck()
    return [code for facts in (LISTING, *outcomes) for code, _ in lc.outcome(facts)]


def book(*outcomes: list[Fact]) -> list[str]:
    bc = BookCheck()
    return [code for facts in (LISTING, *outcomes) for code, _ in bc.outcome(facts)]


# A sell of 5 lots rests at 300 ticks; a buy of 3 lots limited at 301 takes 3 of them.
REST = [accepted("s1", B, "sell", 300, 5), booked("s1", "sell", 300, 5)]
TAKE = [accepted("b1", A, "buy", 301, 3), trade(1, "s1", "b1", 300, 3, 301), closed("b1", A, "USDT", 0)]


def test_a_sound_sequence_passes_both_folds() -> None:
    assert ledger(REST, TAKE) == []
    assert book(REST, TAKE) == []


def test_unbalanced_postings_break_conservation_too() -> None:
    bad = dict(LISTING[3], postings=[["@custody", "USDT", -5, 0], [A, "USDT", 6, 0]], deposit_id="d9",
               reference="r9")
    assert ledger([bad]) == ["unbalanced_postings", "conservation"]


def test_spending_more_than_available_is_a_negative_balance() -> None:
    assert ledger([accepted("b1", A, "buy", 10**9, 10**3)]) == ["negative_balance"]


def test_frozen_must_equal_what_the_holds_hold() -> None:
    fact = accepted("b1", A, "buy", 300, 1)
    fact["postings"] = [[A, "USDT", -100, 100]]  # freezes less than the hold
    assert ledger([fact]) == ["frozen_mismatch"]


def test_a_hold_is_released_exactly_once() -> None:
    assert "hold_not_released" in ledger(REST, [closed("s1", B, "BTC", 10_000)])
    assert "unknown_hold" in ledger(REST, [closed("s1", B, "BTC", 50_000), closed("s1", B, "BTC", 0)])


def test_fees_are_the_market_rates_rounded_up() -> None:
    take = [dict(f) for f in TAKE]
    take[1]["maker_fee"] -= 1
    assert ledger(REST, take) == ["fee_mismatch", "fee_mismatch"]  # the rate, and what @fees got


def test_trade_amounts_are_lots_and_ticks_in_units() -> None:
    take = [dict(f) for f in TAKE]
    take[1]["quote_amount"] += 1
    assert "trade_amounts" in ledger(REST, take)


def test_trade_ids_count_up_by_one() -> None:
    take = [dict(f) for f in TAKE]
    take[1]["trade_id"] = 7
    assert ledger(REST, take) == ["trade_id_sequence"]


def test_a_client_order_id_or_reference_is_applied_once() -> None:
    first = [accepted("b1", A, "buy", 300, 1, coid="c1"), closed("b1", A, "USDT", 300, "cancelled")]
    again = [accepted("b2", A, "buy", 300, 1, coid="c1"), closed("b2", A, "USDT", 300, "cancelled")]
    assert ledger(first, again) == ["duplicate_key"]
    deposit_again = dict(LISTING[3], deposit_id="d3")
    assert ledger([deposit_again]) == ["duplicate_key"]
    assert ledger([dict(LISTING[3], reference="r2")]) == ["duplicate_id"]


def test_a_withdrawal_holds_until_it_ends() -> None:
    requested = {"type": "WithdrawalRequested", "withdrawal_id": "w1", "user_id": A, "asset": "USDT",
                 "amount": 500, "reference": "w", "postings": [[A, "USDT", -500, 500]]}
    done = {"type": "WithdrawalCompleted", "withdrawal_id": "w1", "user_id": A, "asset": "USDT",
            "amount": 500, "postings": [[A, "USDT", 0, -500], ["@custody", "USDT", 500, 0]]}
    assert ledger([requested], [done]) == []
    assert ledger([requested], [done], [done])[0] == "unknown_hold"


def test_a_trade_is_at_the_makers_price() -> None:
    take = [dict(f) for f in TAKE]
    take[1] = trade(1, "s1", "b1", 301, 3, 301)
    assert "trade_price" in book(REST, take)


def test_a_trade_beyond_the_takers_limit_is_refused() -> None:
    rest = [accepted("s1", B, "sell", 305, 5), booked("s1", "sell", 305, 5)]
    take = [accepted("b1", A, "buy", 301, 3), trade(1, "s1", "b1", 305, 3, 301)]
    take.append(closed("b1", A, "USDT", 0))
    assert book(rest, take) == ["trade_price"]


def test_price_time_priority_within_a_level() -> None:
    second = [accepted("s2", B, "sell", 300, 5), booked("s2", "sell", 300, 5)]
    take = [accepted("b1", A, "buy", 301, 3), trade(1, "s2", "b1", 300, 3, 301), closed("b1", A, "USDT", 0)]
    assert book(REST, second, take) == ["priority"]
    assert book(REST, second, TAKE) == []


def test_price_priority_across_levels() -> None:
    better = [accepted("s2", B, "sell", 299, 5), booked("s2", "sell", 299, 5)]
    assert book(REST, better, TAKE) == ["priority"]


def test_the_takers_own_resting_orders_do_not_count_for_priority() -> None:
    own = [accepted("s0", A, "sell", 299, 5), booked("s0", "sell", 299, 5)]
    assert book(own, REST, TAKE) == []


def test_the_book_is_never_crossed_after_an_outcome() -> None:
    bid = [accepted("b1", A, "buy", 300, 1), booked("b1", "buy", 300, 1)]
    assert book(REST, bid) == ["crossed_book"]


def test_an_accepted_order_rests_or_closes_within_its_outcome() -> None:
    assert book([accepted("b1", A, "buy", 200, 1)]) == ["order_unresolved"]


def test_a_booked_order_rests_where_it_said() -> None:
    assert book([accepted("b1", A, "buy", 200, 1), booked("b1", "buy", 201, 1)]) == ["book_state"]


def test_facts_about_unknown_orders() -> None:
    assert book([closed("nope", A, "USDT", 0)]) == ["unknown_order"]
    assert book(TAKE[1:2]) == ["unknown_order", "unknown_order"]


def test_amend_keeping_priority_may_only_shrink() -> None:
    amend = {"type": "OrderAmended", "order_id": "s1", "user_id": B, "market": "BTC-USDT", "price": 300,
             "quantity": 6, "priority": "kept", "hold": 60_000, "postings": [[B, "BTC", -10_000, 10_000]]}
    assert book(REST, [amend]) == ["priority"]
    shrink = dict(amend, quantity=4, hold=40_000, postings=[[B, "BTC", 10_000, -10_000]])
    assert book(REST, [shrink]) == []
    assert ledger(REST, [shrink]) == []


def test_malformed_facts_are_reported_not_raised() -> None:
    assert ledger([{"type": "Deposited", "postings": [["x", "BTC", 1.5, 0]]}]) == ["malformed_fact"]
    assert book([{"type": "OrderBooked"}]) == ["malformed_fact"]
