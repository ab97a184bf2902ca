"""Scenarios for placing orders: validation, holds, price-time matching, fees and time in force.

BTC-USDT in the scenario: a price of "100" is 100 ticks, a quantity of "0.5" is 50 lots, one lot
is 1,000,000 BTC units and an order costs ``ticks × lots`` USDT cents. Maker fee 0.1 %, taker
0.2 %, each taken from what its side receives and rounded up to a whole unit.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from scenario import BTC_USDT, ETH_USDT, Req, Scenario

from domain.ledger import FEES
from domain.orders import BUY, SELL, Order
from engine.book import Book

LOT = 1_000_000  # BTC units in one lot
BTC = 100_000_000


@pytest.fixture
def s() -> Scenario:
    s = Scenario()
    for user in ("alice", "bob", "carol"):
        s.given(s.admin.deposit(user, "USDT", "1000"), s.admin.deposit(user, "BTC", "1"))
    return s


# -- resting and holds ------------------------------------------------------------------------


def test_a_limit_buy_that_does_not_cross_rests_and_holds_its_cost(s: Scenario) -> None:
    then = s.when(s.alice.buy("100", "0.5", "bid"))

    assert then.types == ["OrderAccepted", "OrderBooked"]
    accepted = then.one("OrderAccepted")
    assert (accepted["price"], accepted["quantity"], accepted["hold_asset"], accepted["hold"]) == (
        100, 50, "USDT", 5000,
    )  # fmt: skip
    assert accepted["postings"] == [[s.alice.user_id, "USDT", -5000, 5000]]
    assert then.booked == {"bid": 50}
    assert s.balance("alice", "USDT") == (95_000, 5000)
    assert s.queue(side="buy") == [(100, ["bid"])]


def test_a_limit_sell_holds_its_base_quantity(s: Scenario) -> None:
    then = s.when(s.alice.sell("100", "0.25", "ask"))

    assert then.one("OrderAccepted")["hold"] == 25 * LOT
    assert s.balance("alice", "BTC") == (BTC - 25 * LOT, 25 * LOT)


# -- crossing ---------------------------------------------------------------------------------


def test_a_crossing_buy_trades_at_the_makers_price_and_gets_its_excess_hold_back(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.5", "ask"))

    then = s.when(s.alice.buy("105", "0.5", "bid"))

    assert then.types == ["OrderAccepted", "TradeExecuted", "OrderClosed", "OrderClosed"]
    assert then.trades == [("ask", "bid", 100, 50)]
    assert then.closed == {"ask": ("filled", "filled"), "bid": ("filled", "filled")}
    trade = then.one("TradeExecuted")
    assert (trade["base_amount"], trade["quote_amount"], trade["taker_side"]) == (50 * LOT, 5000, "buy")
    # taker fee 0.2 % of the 50,000,000 BTC units bought; maker fee 0.1 % of the 5000 cents sold for
    assert (trade["taker_fee"], trade["taker_fee_asset"]) == (100_000, "BTC")
    assert (trade["maker_fee"], trade["maker_fee_asset"]) == (5, "USDT")
    # the buyer held 105 × 50 = 5250 cents; the trade used all of it and gave back 250
    assert (trade["taker_hold_used"], trade["maker_hold_used"]) == (5250, 50 * LOT)
    a, b = s.alice.user_id, s.bob.user_id
    assert trade["postings"] == [
        [a, "USDT", 250, -5250],
        [a, "BTC", 50 * LOT - 100_000, 0],
        [b, "BTC", 0, -50 * LOT],
        [b, "USDT", 4995, 0],
        [FEES, "BTC", 100_000, 0],
        [FEES, "USDT", 5, 0],
    ]
    assert s.balance("alice", "USDT") == (100_000 - 5000, 0)
    assert s.balance("alice", "BTC") == (BTC + 50 * LOT - 100_000, 0)
    assert s.balance("bob", "USDT") == (100_000 + 4995, 0)
    assert s.balance("bob", "BTC") == (BTC - 50 * LOT, 0)
    assert s.balance(FEES, "BTC") == (100_000, 0)
    assert s.balance(FEES, "USDT") == (5, 0)


def test_a_crossing_sell_trades_at_the_resting_bids_price(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.5", "bid"))

    then = s.when(s.bob.sell("95", "0.5", "ask"))

    assert then.trades == [("bid", "ask", 100, 50)]
    trade = then.one("TradeExecuted")
    # the seller (taker) pays 0.2 % of 5000 cents, the buyer (maker) 0.1 % of the BTC it gets
    assert (trade["taker_fee"], trade["taker_fee_asset"]) == (10, "USDT")
    assert (trade["maker_fee"], trade["maker_fee_asset"]) == (50_000, "BTC")
    assert (trade["taker_hold_used"], trade["maker_hold_used"]) == (50 * LOT, 5000)
    assert s.balance("bob", "USDT") == (100_000 + 4990, 0)
    assert s.balance("alice", "BTC") == (BTC + 50 * LOT - 50_000, 0)
    assert s.balance("alice", "USDT") == (95_000, 0)


def test_fees_round_up_to_a_whole_unit(s: Scenario) -> None:
    s.given(s.alice.buy("101", "0.03", "bid"))

    trade = s.when(s.bob.sell("101", "0.03", "ask")).one("TradeExecuted")

    assert trade["quote_amount"] == 303
    assert trade["taker_fee"] == 1  # 303 × 0.002 = 0.606 → 1
    assert trade["maker_fee"] == 3000  # 3,000,000 × 0.001, exact
    s.given(s.carol.sell("101", "0.03", "ask-2"))
    trade = s.when(s.bob.buy("101", "0.03", "bid-2")).one("TradeExecuted")
    assert trade["maker_fee"] == 1  # 303 × 0.001 = 0.303 → 1
    assert trade["taker_fee"] == 6000
    assert s.balance(FEES, "USDT") == (2, 0)
    assert s.balance(FEES, "BTC") == (9000, 0)


def test_a_market_without_fees_charges_none(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "ETH", "1"), s.alice.sell("2000", "0.5", "ask", market=ETH_USDT))

    trade = s.when(s.bob.buy("2000", "0.5", "bid", market=ETH_USDT)).one("TradeExecuted")

    # 4000 ticks × 5 lots × 5 cents = 1000.00 USDT
    assert (trade["quote_amount"], trade["maker_fee"], trade["taker_fee"]) == (100_000, 0, 0)
    assert s.balance("bob", "ETH") == (500_000, 0)


# -- priority ---------------------------------------------------------------------------------


def test_better_prices_fill_first_and_the_limit_stops_the_walk(s: Scenario) -> None:
    s.given(
        s.carol.sell("102", "0.1", "a102"),
        s.bob.sell("101", "0.1", "a101-bob"),
        s.carol.sell("103", "0.1", "a103"),
        s.carol.sell("101", "0.1", "a101-carol"),
    )

    then = s.when(s.alice.buy("102", "0.25", "bid"))

    assert then.trades == [
        ("a101-bob", "bid", 101, 10),
        ("a101-carol", "bid", 101, 10),
        ("a102", "bid", 102, 5),
    ]
    assert then.closed == {
        "a101-bob": ("filled", "filled"),
        "a101-carol": ("filled", "filled"),
        "bid": ("filled", "filled"),
    }
    assert s.remaining("a102") == 5
    assert s.queue() == [(102, ["a102"]), (103, ["a103"])]
    # held 102 × 25 = 2550, paid 101 × 20 + 102 × 5 = 2530
    assert s.balance("alice", "USDT") == (100_000 - 2530, 0)


def test_orders_at_one_price_fill_first_in_first_out(s: Scenario) -> None:
    s.given(
        s.bob.buy("100", "0.1", "first"),
        s.carol.buy("100", "0.1", "second"),
        s.bob.buy("100", "0.1", "third"),
    )

    then = s.when(s.alice.sell("100", "0.15", "ask"))

    assert then.trades == [("first", "ask", 100, 10), ("second", "ask", 100, 5)]
    assert s.queue(side="buy") == [(100, ["second", "third"])]
    assert s.remaining("second") == 5


def test_a_partly_filled_limit_order_rests_its_remainder(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "ask"))

    then = s.when(s.alice.buy("100", "0.5", "bid"))

    assert then.trades == [("ask", "bid", 100, 20)]
    assert then.closed == {"ask": ("filled", "filled")}
    assert then.booked == {"bid": 30}
    assert s.balance("alice", "USDT") == (100_000 - 5000, 3000)
    assert s.queue(side="buy") == [(100, ["bid"])]


# -- time in force and post-only --------------------------------------------------------------


def test_an_ioc_remainder_expires_and_its_hold_is_released(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "ask"))

    then = s.when(s.alice.buy("100", "0.5", "bid", tif="IOC"))

    assert then.trades == [("ask", "bid", 100, 20)]
    assert then.closed == {"ask": ("filled", "filled"), "bid": ("expired", "time_in_force")}
    assert then.one("OrderClosed", order_id="bid")["released"] == 3000
    assert s.balance("alice", "USDT") == (100_000 - 2000, 0)
    assert s.queue(side="buy") == []


def test_an_ioc_that_meets_nothing_expires_at_once(s: Scenario) -> None:
    then = s.when(s.alice.sell("100", "0.5", "ask", tif="IOC"))

    assert then.types == ["OrderAccepted", "OrderClosed"]
    assert then.closed == {"ask": ("expired", "time_in_force")}
    assert s.balance("alice", "BTC") == (BTC, 0)


def test_a_fok_that_the_book_can_fill_fills_completely(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "a100"), s.carol.sell("101", "0.3", "a101"))

    then = s.when(s.alice.buy("101", "0.5", "bid", tif="FOK"))

    assert then.trades == [("a100", "bid", 100, 20), ("a101", "bid", 101, 30)]
    assert then.closed["bid"] == ("filled", "filled")


@pytest.mark.parametrize(
    ("price", "quantity"), [("101", "0.51"), ("100", "0.3")], ids=["too_big", "beyond_limit"]
)
def test_a_fok_that_cannot_fill_completely_is_rejected_with_no_change(
    s: Scenario, price: str, quantity: str
) -> None:
    s.given(s.bob.sell("100", "0.2", "a100"), s.carol.sell("101", "0.3", "a101"))

    fact = s.when_rejected(s.alice.buy(price, quantity, "bid", tif="FOK"), "fok_not_filled")

    assert fact["type"] == "OrderRejected"
    assert (fact["order_id"], fact["client_order_id"]) == (s.ids["bid"], "bid")


def test_a_post_only_order_that_does_not_cross_rests(s: Scenario) -> None:
    s.given(s.bob.sell("101", "0.2", "ask"))

    then = s.when(s.alice.buy("100", "0.5", "bid", post_only=True))

    assert then.booked == {"bid": 50}
    assert then.one("OrderAccepted")["post_only"] is True


@pytest.mark.parametrize("price", ["101", "102"])
def test_a_post_only_order_that_would_take_is_rejected(s: Scenario, price: str) -> None:
    s.given(s.bob.sell("101", "0.2", "ask"))

    s.when_rejected(s.alice.buy(price, "0.5", "bid", post_only=True), "would_take")


# -- market orders ----------------------------------------------------------------------------


def test_a_market_sell_by_quantity_walks_the_bids(s: Scenario) -> None:
    s.given(s.bob.buy("100", "0.2", "b100"), s.carol.buy("99", "0.2", "b99"))

    then = s.when(s.alice.market("sell", "mkt", quantity="0.3"))

    assert then.trades == [("b100", "mkt", 100, 20), ("b99", "mkt", 99, 10)]
    assert then.closed == {"b100": ("filled", "filled"), "mkt": ("filled", "filled")}
    accepted = then.one("OrderAccepted")
    assert (accepted["order_type"], accepted["price"], accepted["time_in_force"]) == ("market", None, "IOC")
    # 2000 + 990 cents, less the 0.2 % taker fee (4 + 2, each rounded up)
    assert s.balance("alice", "USDT") == (100_000 + 2990 - 6, 0)


def test_a_market_sell_beyond_the_book_expires_its_remainder(s: Scenario) -> None:
    s.given(s.bob.buy("100", "0.2", "b100"))

    then = s.when(s.alice.market("sell", "mkt", quantity="0.5"))

    assert then.trades == [("b100", "mkt", 100, 20)]
    assert then.closed["mkt"] == ("expired", "no_liquidity")
    assert then.one("OrderClosed", order_id="mkt")["released"] == 30 * LOT
    assert s.balance("alice", "BTC") == (BTC - 20 * LOT, 0)


def test_a_market_buy_by_quantity_holds_exactly_what_it_will_pay(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "a100"), s.carol.sell("105", "0.2", "a105"))

    then = s.when(s.alice.market("buy", "mkt", quantity="0.3"))

    assert then.one("OrderAccepted")["hold"] == 100 * 20 + 105 * 10
    assert then.trades == [("a100", "mkt", 100, 20), ("a105", "mkt", 105, 10)]
    assert then.one("OrderClosed", order_id="mkt")["released"] == 0
    assert s.balance("alice", "USDT") == (100_000 - 3050, 0)


def test_a_market_buy_by_quantity_needs_funds_for_its_exact_cost(s: Scenario) -> None:
    s.given(
        s.admin.deposit("carol", "BTC", "10"),
        s.carol.sell("100", "10", "a100"),  # 1000 lots at 100: 1000.00 USDT
        s.alice.withdraw("USDT", "0.01", "w"),  # alice keeps 999.99
    )

    s.when_rejected(s.alice.market("buy", "mkt", quantity="10"), "insufficient_funds")
    assert s.when(s.alice.market("buy", "mkt-2", quantity="9.99")).trades == [("a100", "mkt-2", 100, 999)]


def test_a_market_buy_by_quantity_beyond_the_book_holds_only_what_the_book_offers(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.2", "a100"))

    then = s.when(s.alice.market("buy", "mkt", quantity="0.5"))

    assert then.one("OrderAccepted")["hold"] == 2000
    assert then.trades == [("a100", "mkt", 100, 20)]
    assert then.closed["mkt"] == ("expired", "no_liquidity")


def test_a_market_buy_by_quote_never_overspends_and_releases_the_dust(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.05", "a100"), s.carol.sell("101", "0.1", "a101"))

    then = s.when(s.alice.market("buy", "mkt", quote="10"))

    accepted = then.one("OrderAccepted")
    assert (accepted["quote_quantity"], accepted["quantity"], accepted["hold"]) == (1000, None, 1000)
    # 5 lots at 100 = 500; the 500 left buys 4 lots at 101 = 404; 96 cents of dust
    assert then.trades == [("a100", "mkt", 100, 5), ("a101", "mkt", 101, 4)]
    closed = then.one("OrderClosed", order_id="mkt")
    assert (closed["status"], closed["reason"], closed["released"]) == ("filled", "budget_spent", 96)
    assert s.balance("alice", "USDT") == (100_000 - 904, 0)
    assert s.remaining("a101") == 6


def test_a_market_buy_by_quote_that_spends_everything_exactly_is_filled(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.05", "a100"))

    then = s.when(s.alice.market("buy", "mkt", quote="5"))

    assert then.trades == [("a100", "mkt", 100, 5)]
    closed = then.one("OrderClosed", order_id="mkt")
    assert (closed["status"], closed["reason"], closed["released"]) == ("filled", "budget_spent", 0)


def test_a_market_buy_by_quote_beyond_the_book_expires_and_releases_the_rest(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.05", "a100"))

    then = s.when(s.alice.market("buy", "mkt", quote="10"))

    assert then.trades == [("a100", "mkt", 100, 5)]
    closed = then.one("OrderClosed", order_id="mkt")
    assert (closed["status"], closed["reason"], closed["released"]) == ("expired", "no_liquidity", 500)
    assert s.balance("alice", "USDT") == (100_000 - 500, 0)


def test_a_market_buy_by_quote_that_cannot_afford_one_lot_is_not_reported_filled(s: Scenario) -> None:
    s.given(s.bob.sell("100", "0.1", "a100"))  # one lot costs 1.00 USDT

    then = s.when(s.alice.market("buy", "mkt", quote="0.99"))

    assert then.trades == []
    assert then.one("OrderClosed", order_id="mkt")["released"] == 99
    assert then.closed["mkt"][0] != "filled"


def test_a_market_buy_by_quote_needs_its_budget_available(s: Scenario) -> None:
    s.when_rejected(s.alice.market("buy", "mkt", quote="1000.01"), "insufficient_funds")


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "quantity", "reason"),
    [
        ("100.5", "0.1", "invalid_price"),  # tick 1
        ("100", "0.005", "invalid_quantity"),  # lot 0.01
    ],
)
def test_prices_and_quantities_must_be_on_the_tick_and_lot(
    s: Scenario, price: str, quantity: str, reason: str
) -> None:
    s.when_rejected(s.alice.buy(price, quantity, "bid"), reason)


def test_a_market_sell_off_the_lot_is_rejected(s: Scenario) -> None:
    s.when_rejected(s.alice.market("sell", "mkt", quantity="0.001"), "invalid_quantity")


@pytest.mark.parametrize(
    "order",
    [
        lambda s: s.alice.buy("100", "10.01", "bid"),  # 1001.00 USDT
        lambda s: s.alice.sell("100", "1.01", "ask"),  # 1.01 BTC
    ],
    ids=["buy", "sell"],
)
def test_an_order_beyond_the_available_balance_is_rejected(
    s: Scenario, order: Callable[[Scenario], Req]
) -> None:
    s.when_rejected(order(s), "insufficient_funds")


def test_held_funds_are_not_available_to_another_order(s: Scenario) -> None:
    s.given(s.alice.buy("100", "6", "bid-1"))  # holds 600.00 of 1000.00

    s.when_rejected(s.alice.buy("90", "5", "bid-2"), "insufficient_funds")  # 450.00


def test_an_order_in_an_unknown_market_is_rejected(s: Scenario) -> None:
    s.when_rejected(s.alice.buy("100", "1", "bid", market="SOL-USDT"), "unknown_market")


def test_a_client_order_id_is_used_once(s: Scenario) -> None:
    s.given(s.alice.buy("100", "0.1", "bid"), s.alice.cancel("bid"))

    s.when_rejected(s.alice.buy("100", "0.1", "bid"), "duplicate")


def test_the_minimum_notional_applies_to_limit_and_quote_orders() -> None:
    s = Scenario(min_notional="10")
    s.given(s.admin.deposit("alice", "USDT", "100"), s.admin.deposit("bob", "BTC", "1"))

    s.when_rejected(s.alice.buy("100", "0.09", "small"), "min_notional")  # 9.00 < 10.00
    s.when_rejected(s.alice.market("buy", "small-m", quote="9.99"), "min_notional")
    s.when_rejected(s.bob.sell("999", "0.01", "small-ask"), "min_notional")
    assert s.when(s.alice.buy("100", "0.1", "enough")).booked == {"enough": 10}
    assert s.ex.markets[BTC_USDT].min_notional_units == 1000


# -- the book itself: levels and queues under heavy churn ---------------------------------------


def _resting(oid: str, side: str, price: int, lots: int) -> Order:
    return Order(oid, "u", BTC_USDT, side, "limit", price, lots, None, 0, "USDT", "GTC", False,
                 "cancel_resting", None)  # fmt: skip


def test_a_long_level_keeps_time_priority_through_cancels_and_fills() -> None:
    """Enough deletions in one level that the book rebuilds its queue, more than once."""
    book = Book(BTC_USDT)
    queue = [_resting(f"o{i}", SELL, 100, 2) for i in range(400)]
    for order in queue:
        book.add(order)
    first_queue = book.asks[100].orders
    for order in queue[1::3]:  # cancels all through the level
        book.remove(order)
    queue = [o for i, o in enumerate(queue) if i % 3 != 1]
    while queue:  # a buyer takes one lot at a time from the front
        maker = next(iter(book.makers(BUY, 100)))
        assert maker is queue[0]
        book.reduce(maker, 1)
        if maker.remaining == 0:
            queue.pop(0)
            assert not maker.booked
        assert [o.order_id for o in book.makers(BUY, None)] == [o.order_id for o in queue]
        assert book.depth(SELL) == ([(100, sum(o.remaining for o in queue))] if queue else [])
        assert book.check() == []
        if len(queue) == 100:
            assert book.asks[100].orders is not first_queue  # the queue was rebuilt on the way
    assert book.best_ask() is None and book.state() == {"bids": [], "asks": []}


def test_levels_created_and_emptied_at_random_stay_in_price_order() -> None:
    rng = random.Random(7)
    book = Book(BTC_USDT)
    live: dict[str, Order] = {}
    for i in range(3000):
        if live and rng.random() < 0.45:
            order = live.pop(rng.choice(sorted(live)))
            book.remove(order)
        else:
            side = rng.choice((BUY, SELL))
            price = rng.randrange(1, 100) if side == BUY else rng.randrange(100, 200)
            order = live[f"o{i}"] = _resting(f"o{i}", side, price, rng.randrange(1, 5))
            book.add(order)
        for side in (BUY, SELL):
            totals: dict[int, int] = {}
            for order in live.values():
                if order.side == side:
                    totals[order.price] = totals.get(order.price, 0) + order.remaining  # type: ignore[index]
            want = sorted(totals.items(), reverse=side == BUY)
            assert book.depth(side) == want
        bids = [o.price for o in live.values() if o.side == BUY]
        asks = [o.price for o in live.values() if o.side == SELL]
        assert book.best_bid() == (max(bids) if bids else None)  # type: ignore[type-var]
        assert book.best_ask() == (min(asks) if asks else None)  # type: ignore[type-var]
        assert book.would_take(BUY, 150) == bool(asks and min(asks) <= 150)  # type: ignore[type-var, operator]
    assert book.check() == []


def test_makers_walks_only_the_levels_a_limit_reaches_best_first() -> None:
    book = Book(BTC_USDT)
    for oid, price in (("a101", 101), ("a100", 100), ("a103", 103), ("a100b", 100)):
        book.add(_resting(oid, SELL, price, 1))
    book.add(_resting("b99", BUY, 99, 1))

    assert list(book.makers(BUY, 99)) == []
    assert [o.order_id for o in book.makers(BUY, 101)] == ["a100", "a100b", "a101"]
    assert [o.order_id for o in book.makers(BUY, None)] == ["a100", "a100b", "a101", "a103"]
    assert [o.order_id for o in book.makers(SELL, 100)] == []
    assert [o.order_id for o in book.makers(SELL, 99)] == ["b99"]


def test_the_book_check_finds_sorted_keys_that_disagree_with_the_levels() -> None:
    book = Book(BTC_USDT)
    book.add(_resting("a", SELL, 100, 1))
    book.add(_resting("b", SELL, 101, 1))
    assert book.check() == []

    book.asks.ladder.pop()  # the best level's key is lost from the sorted keys

    assert [v.code for v in book.check()] == ["level_keys"]
