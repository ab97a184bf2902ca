"""Scenarios for changing open orders: amend, cancel, cancel-all and self-trade prevention.

Priority is proved by a later fill: whoever the next taker meets first is first in the queue.
Units as in ``test_engine_matching``: "100" is 100 ticks, "0.5" is 50 lots of 1,000,000 BTC
units, and an order costs ``ticks × lots`` USDT cents.
"""

from __future__ import annotations

import pytest
from scenario import BTC_USDT, ETH_USDT, Scenario

LOT = 1_000_000
BTC = 100_000_000


@pytest.fixture
def s() -> Scenario:
    s = Scenario()
    for user in ("alice", "bob", "carol"):
        s.given(s.admin.deposit(user, "USDT", "1000"), s.admin.deposit(user, "BTC", "1"))
    return s


# -- amend: priority --------------------------------------------------------------------------


def test_reducing_quantity_keeps_time_priority(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.5", "first"), s.carol.sell("100", "0.5", "second"))

    then = s.when(s.bob.amend("first", quantity="0.3"))

    amended = then.one("OrderAmended", order_id="first")
    assert (amended["priority"], amended["quantity"], amended["price"], amended["hold"]) == (
        "kept", 30, 100, 30 * LOT,
    )  # fmt: skip
    assert amended["postings"] == [[s.bob.user_id, "BTC", 20 * LOT, -20 * LOT]]
    assert then.types == ["OrderAmended"]
    assert s.queue() == [(100, ["first", "second"])]
    assert s.when(s.alice.buy("100", "0.4", "taker")).trades == [
        ("first", "taker", 100, 30),
        ("second", "taker", 100, 10),
    ]


def test_changing_price_loses_time_priority(s: Scenario) -> None:
    s.given(s.bob.sell("101", "0.5", "bob-ask"), s.carol.sell("100", "0.5", "carol-ask"))

    then = s.when(s.bob.amend("bob-ask", price="100"))

    assert then.types == ["OrderAmended", "OrderBooked"]
    assert then.one("OrderAmended")["priority"] == "lost"
    assert then.booked == {"bob-ask": 50}
    assert s.queue() == [(100, ["carol-ask", "bob-ask"])]
    assert s.when(s.alice.buy("100", "0.6", "taker")).trades == [
        ("carol-ask", "taker", 100, 50),
        ("bob-ask", "taker", 100, 10),
    ]


def test_increasing_quantity_loses_time_priority_and_holds_more(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.5", "first"), s.carol.sell("100", "0.5", "second"))

    then = s.when(s.bob.amend("first", quantity="0.6"))

    amended = then.one("OrderAmended")
    assert (amended["priority"], amended["hold"]) == ("lost", 60 * LOT)
    assert amended["postings"] == [[s.bob.user_id, "BTC", -10 * LOT, 10 * LOT]]
    assert s.balance("bob", "BTC") == (BTC - 60 * LOT, 60 * LOT)
    assert s.queue() == [(100, ["second", "first"])]
    assert s.when(s.alice.buy("100", "0.1", "taker")).trades == [("second", "taker", 100, 10)]


def test_an_amend_to_the_same_price_and_quantity_keeps_priority_and_changes_nothing(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.5", "first"), s.carol.sell("100", "0.5", "second"))

    then = s.when(s.bob.amend("first", price="100", quantity="0.5"))

    assert then.one("OrderAmended")["priority"] == "kept"
    assert then.one("OrderAmended")["postings"] == []
    assert s.queue() == [(100, ["first", "second"])]


def test_lowering_a_bids_price_releases_part_of_its_hold(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"))

    then = s.when(s.alice.amend("bid", price="90"))

    assert then.one("OrderAmended")["hold"] == 4500
    assert s.balance("alice", "USDT") == (100_000 - 4500, 4500)


def test_an_amend_that_crosses_trades_like_a_new_order(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "ask"), s.alice.buy("95", "0.5", "bid"))

    then = s.when(s.alice.amend("bid", price="101"))

    assert then.types == ["OrderAmended", "TradeExecuted", "OrderClosed", "OrderBooked"]
    assert then.trades == [("ask", "bid", 100, 20)]
    assert then.booked == {"bid": 30}
    # holds 101 × 30 for the rest; paid 100 × 20
    assert s.balance("alice", "USDT") == (100_000 - 2000 - 3030, 3030)


# -- amend: checks ----------------------------------------------------------------------------


def test_an_amend_that_needs_more_than_is_available_is_rejected_with_no_change(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.5", "ask"), s.bob.sell("105", "0.5", "ask-2"))  # all bob's BTC

    fact = s.when_rejected(s.bob.amend("ask", quantity="0.51"), "insufficient_funds")

    assert fact["type"] == "AmendRejected"
    assert fact["order_id"] == s.ids["ask"]
    s.given(s.alice.buy("100", "9.5", "bid"))  # holds 950.00 of 1000.00
    s.when_rejected(s.alice.amend("bid", price="106"), "insufficient_funds")  # 1007.00


def test_an_amend_must_leave_more_than_is_filled(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"), s.bob.sell("100", "0.3", "ask"))

    s.when_rejected(s.alice.amend("bid", quantity="0.3"), "invalid_quantity")
    s.when_rejected(s.alice.amend("bid", quantity="0.2"), "invalid_quantity")
    then = s.when(s.alice.amend("bid", quantity="0.4"))
    amended = then.one("OrderAmended")
    assert (amended["priority"], amended["quantity"], amended["hold"]) == ("kept", 40, 1000)
    assert s.remaining("bid") == 10


@pytest.mark.parametrize(
    ("price", "quantity", "reason"),
    [("100.5", None, "invalid_price"), (None, "0.001", "invalid_quantity")],
)
def test_an_amend_off_the_tick_or_lot_is_rejected(
    s: Scenario, price: str | None, quantity: str | None, reason: str
) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"))

    s.when_rejected(s.alice.amend("bid", price=price, quantity=quantity), reason)


def test_an_amended_post_only_order_may_not_take(s: Scenario) -> None:
    s.given(s.bob.sell("101", "0.5", "ask"), s.alice.buy("100", "0.5", "bid", post_only=True))

    s.when_rejected(s.alice.amend("bid", price="101"), "would_take")


def test_an_amend_below_the_minimum_notional_is_rejected() -> None:
    s = Scenario(min_notional="10")
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.buy("100", "0.2", "bid"))

    s.when_rejected(s.alice.amend("bid", quantity="0.09"), "min_notional")


def test_only_the_owner_may_amend_or_cancel_an_order(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"))

    amend = s.when_rejected(s.bob.amend("bid", quantity="0.1"), "unknown_order")
    cancel = s.when_rejected(s.bob.cancel("bid"), "unknown_order")

    assert (amend["type"], cancel["type"]) == ("AmendRejected", "CancelRejected")
    assert s.is_open("bid")


def test_a_closed_order_can_be_neither_amended_nor_cancelled(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"), s.alice.cancel("bid"))

    s.when_rejected(s.alice.amend("bid", quantity="0.1"), "unknown_order")
    s.when_rejected(s.alice.cancel("bid"), "unknown_order")


# -- cancel -----------------------------------------------------------------------------------


def test_a_cancel_closes_the_order_and_releases_what_it_still_holds(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"), s.bob.sell("100", "0.2", "ask"))

    then = s.when(s.alice.cancel("bid"))

    closed = then.one("OrderClosed", order_id="bid")
    assert (closed["status"], closed["reason"], closed["released"]) == ("cancelled", "user", 3000)
    assert closed["postings"] == [[s.alice.user_id, "USDT", 3000, -3000]]
    assert s.balance("alice", "USDT") == (100_000 - 2000, 0)
    assert s.queue(side="buy") == []


def test_cancel_all_closes_every_open_order_of_the_user_only(s: Scenario) -> None:
    s.given(
        s.admin.deposit("alice", "ETH", "1"),
        s.alice.buy("90", "0.5", "bid"),
        s.alice.sell("110", "0.5", "ask"),
        s.alice.sell("2000", "1", "eth-ask", market=ETH_USDT),
        s.bob.buy("91", "0.5", "bob-bid"),
    )

    then = s.when(s.alice.cancel_all())

    assert then.closed == {  # in the order they were accepted
        "bid": ("cancelled", "user"),
        "ask": ("cancelled", "user"),
        "eth-ask": ("cancelled", "user"),
    }
    assert s.is_open("bob-bid")
    assert s.balance("alice", "USDT") == (100_000, 0)
    assert s.balance("alice", "ETH") == (1_000_000, 0)


def test_cancel_all_in_one_market_leaves_the_others(s: Scenario) -> None:
    s.given(
        s.admin.deposit("alice", "ETH", "1"),
        s.alice.buy("90", "0.5", "bid"),
        s.alice.sell("2000", "1", "eth-ask", market=ETH_USDT),
    )

    then = s.when(s.alice.cancel_all(ETH_USDT))

    assert then.closed == {"eth-ask": ("cancelled", "user")}
    assert s.is_open("bid")


def test_cancel_all_with_nothing_open_does_nothing(s: Scenario) -> None:
    before = s.ex.state_hash()

    assert s.when(s.alice.cancel_all(BTC_USDT)).facts == []
    assert s.ex.state_hash() == before


def test_cancel_all_in_an_unknown_market_is_rejected(s: Scenario) -> None:
    s.given(s.alice.buy("90", "0.5", "bid"))

    fact = s.when_rejected(s.alice.cancel_all("SOL-USDT"), "unknown_market")

    assert (fact["type"], fact["command"]) == ("RequestRejected", "CancelAllOrders")


# -- self-trade prevention --------------------------------------------------------------------


@pytest.fixture
def own_ask_first(s: Scenario) -> Scenario:
    """Best ask: carol at 99; then alice's own ask at 100, ahead of bob's ask at 100."""
    s.given(
        s.carol.sell("99", "0.1", "carol-99"),
        s.alice.sell("100", "0.2", "own"),
        s.bob.sell("100", "0.2", "bob-100"),
    )
    return s


def test_stp_cancel_resting_cancels_the_own_order_and_goes_on_matching(own_ask_first: Scenario) -> None:
    s = own_ask_first

    then = s.when(s.alice.buy("100", "0.3", "bid"))

    assert then.types == [
        "OrderAccepted", "TradeExecuted", "OrderClosed", "OrderClosed", "TradeExecuted",
        "OrderClosed", "OrderClosed",
    ]  # fmt: skip
    assert then.trades == [("carol-99", "bid", 99, 10), ("bob-100", "bid", 100, 20)]
    assert then.closed == {
        "carol-99": ("filled", "filled"),
        "own": ("cancelled", "self_trade"),
        "bob-100": ("filled", "filled"),
        "bid": ("filled", "filled"),
    }
    assert then.one("OrderClosed", order_id="own")["released"] == 20 * LOT
    assert s.queue() == []
    assert s.balance("alice", "BTC") == (BTC + 30 * LOT - 60_000, 0)  # taker fee 0.2 %


def test_stp_cancel_taker_closes_the_incoming_order_and_keeps_the_resting_one(
    own_ask_first: Scenario,
) -> None:
    s = own_ask_first

    then = s.when(s.alice.buy("100", "0.3", "bid", stp="cancel_taker"))

    assert then.trades == [("carol-99", "bid", 99, 10)]
    assert then.closed == {"carol-99": ("filled", "filled"), "bid": ("cancelled", "self_trade")}
    assert then.one("OrderClosed", order_id="bid")["released"] == 100 * 20
    assert s.queue() == [(100, ["own", "bob-100"])]
    assert s.balance("alice", "USDT") == (100_000 - 990, 0)


def test_stp_cancel_both_closes_both_orders(own_ask_first: Scenario) -> None:
    s = own_ask_first

    then = s.when(s.alice.buy("100", "0.3", "bid", stp="cancel_both"))

    assert then.trades == [("carol-99", "bid", 99, 10)]
    assert then.closed == {
        "carol-99": ("filled", "filled"),
        "own": ("cancelled", "self_trade"),
        "bid": ("cancelled", "self_trade"),
    }
    assert s.queue() == [(100, ["bob-100"])]
    assert s.balance("alice", "USDT") == (100_000 - 990, 0)
    assert s.balance("alice", "BTC") == (BTC + 10 * LOT - 20_000, 0)


def test_stp_applies_to_market_orders_too(own_ask_first: Scenario) -> None:
    s = own_ask_first

    then = s.when(s.alice.market("buy", "mkt", quantity="0.3"))

    # the exact cost held skips the own order: 99 × 10 + 100 × 20
    assert then.one("OrderAccepted")["hold"] == 2990
    assert then.trades == [("carol-99", "mkt", 99, 10), ("bob-100", "mkt", 100, 20)]
    assert then.closed["own"] == ("cancelled", "self_trade")


def test_stp_does_not_let_a_fok_count_the_users_own_orders(own_ask_first: Scenario) -> None:
    s = own_ask_first

    s.when_rejected(s.alice.buy("100", "0.4", "fok", tif="FOK"), "fok_not_filled")
    then = s.when(s.alice.buy("100", "0.3", "fok-2", tif="FOK"))
    assert then.trades == [("carol-99", "fok-2", 99, 10), ("bob-100", "fok-2", 100, 20)]


# -- an order's row in a snapshot -------------------------------------------------------------


def test_an_orders_snapshot_row_holds_each_field_at_its_place_in_FIELDS() -> None:
    """Stored snapshots are read by position: ``to_state`` writes, and ``from_state`` reads, each
    field where ``FIELDS`` names it (distinct values, so a swap of two fields shows)."""
    from domain.orders import FIELDS, Order

    order = Order("o1", "u1", "BTC-USDT", "sell", "limit", 101, 102, None, 103, "BTC", "GTC", True,
                  "cancel_newest", "c1")
    order.remaining, order.filled, order.filled_quote, order.booked = 104, 105, 106, True
    row = order.to_state()
    assert dict(zip(FIELDS, row, strict=True)) == {name: getattr(order, name) for name in FIELDS}
    restored = Order.from_state(row)
    assert restored.to_state() == row
    with pytest.raises(ValueError):
        Order.from_state(row[:-1])
