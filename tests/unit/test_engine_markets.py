"""Scenarios for assets, market listings and the market lifecycle (trading → halted → delisted)."""

from __future__ import annotations

import pytest
from scenario import BTC_USDT, ETH_USDT, Scenario

from domain.markets import Market


@pytest.fixture
def s() -> Scenario:
    return Scenario()


# -- listing ----------------------------------------------------------------------------------


def test_a_listed_market_starts_trading(s: Scenario) -> None:
    s.given(s.admin.list_asset("SOL", 4))

    then = s.when(s.admin.list_market("SOL-USDT", "0.1", "0.1", min_notional="5", taker_fee="0.001"))

    fact = then.one("MarketListed", symbol="SOL-USDT")
    assert fact == {
        "type": "MarketListed", "symbol": "SOL-USDT", "base": "SOL", "quote": "USDT",
        "tick_size": "0.1", "lot_size": "0.1", "min_notional": "5", "maker_fee": "0",
        "taker_fee": "0.001",
    }  # fmt: skip
    assert s.ex.status["SOL-USDT"] == "trading"
    market: Market = s.ex.markets["SOL-USDT"]
    assert (market.lot_units, market.notional_units, market.min_notional_units) == (1000, 1, 500)


@pytest.mark.parametrize(
    ("symbol", "tick", "lot", "extra", "reason"),
    [
        # tick × lot = 0.00001 USDT, not a whole number of cents
        ("SOL-USDT", "0.001", "0.01", {}, "invalid_market"),
        # a lot smaller than SOL's smallest unit (4 decimals)
        ("SOL-USDT", "1", "0.00001", {}, "invalid_market"),
        # min notional not in whole cents
        ("SOL-USDT", "0.01", "1", {"min_notional": "0.001"}, "invalid_market"),
        # a fee rate of 100 % or more
        ("SOL-USDT", "0.01", "1", {"taker_fee": "1"}, "invalid_market"),
        # the symbol must be BASE-QUOTE
        ("USDT-SOL", "0.01", "1", {"base": "SOL", "quote": "USDT"}, "invalid_market"),
        ("SOL-DOGE", "0.01", "1", {}, "unknown_asset"),
        (BTC_USDT, "1", "0.01", {}, "market_exists"),
    ],
    ids=["tick_x_lot", "lot_precision", "min_notional", "fee", "symbol", "unknown_quote", "exists"],
)
def test_a_listing_that_cannot_price_orders_exactly_is_rejected(
    s: Scenario, symbol: str, tick: str, lot: str, extra: dict[str, str], reason: str
) -> None:
    s.given(s.admin.list_asset("SOL", 4))
    s.when_rejected(s.admin.list_market(symbol, tick, lot, **extra), reason)


def test_an_asset_is_listed_once(s: Scenario) -> None:
    s.when_rejected(s.admin.list_asset("BTC", 8), "asset_exists")


# -- halt and resume --------------------------------------------------------------------------


@pytest.fixture
def halted(s: Scenario) -> Scenario:
    """Alice rests a bid and an ask in BTC-USDT, then the market is halted."""
    s.given(
        s.admin.deposit("alice", "USDT", "1000"),
        s.admin.deposit("alice", "BTC", "1"),
        s.admin.deposit("bob", "BTC", "1"),
        s.alice.buy("90", "1", "bid"),
        s.alice.sell("110", "0.5", "ask"),
    )
    then = s.when(s.admin.halt())
    assert then.facts == [{"type": "MarketStatusChanged", "market": BTC_USDT, "status": "halted"}]
    return s


def test_a_halted_market_refuses_new_orders(halted: Scenario) -> None:
    s = halted
    s.when_rejected(s.bob.sell("90", "0.1", "hit"), "market_not_trading")
    s.when_rejected(s.bob.market("sell", "hit-m", quantity="0.1"), "market_not_trading")


def test_a_halted_market_refuses_amends(halted: Scenario) -> None:
    s = halted
    s.when_rejected(s.alice.amend("bid", quantity="0.5"), "market_not_trading")
    s.when_rejected(s.alice.amend("bid", price="91"), "market_not_trading")


def test_a_halted_market_still_cancels(halted: Scenario) -> None:
    s = halted

    then = s.when(s.alice.cancel("bid"))

    assert then.closed == {"bid": ("cancelled", "user")}
    assert then.one("OrderClosed")["released"] == 90 * 100
    assert s.balance("alice", "USDT") == (100_000, 0)
    assert s.when(s.alice.cancel_all(BTC_USDT)).closed == {"ask": ("cancelled", "user")}


def test_other_markets_keep_trading_while_one_is_halted(halted: Scenario) -> None:
    s = halted
    s.given(s.admin.deposit("bob", "ETH", "1"))

    assert s.when(s.bob.sell("2000", "0.5", "eth-ask", market=ETH_USDT)).booked == {"eth-ask": 5}


def test_a_resumed_market_trades_again_with_its_book_intact(halted: Scenario) -> None:
    s = halted

    then = s.when(s.admin.resume())
    assert then.facts == [{"type": "MarketStatusChanged", "market": BTC_USDT, "status": "trading"}]

    assert s.when(s.bob.sell("90", "0.4", "hit")).trades == [("bid", "hit", 90, 40)]


@pytest.mark.parametrize(
    ("first", "then_", "reason"),
    [
        (None, "resume", "market_not_trading"),  # resuming a trading market
        ("halt", "halt", "market_not_trading"),  # halting twice
        ("delist", "resume", "market_not_trading"),  # delisting is final
        ("delist", "halt", "market_not_trading"),
        ("delist", "delist", "market_not_trading"),
    ],
)
def test_status_changes_follow_the_lifecycle(
    s: Scenario, first: str | None, then_: str, reason: str
) -> None:
    if first is not None:
        s.given(getattr(s.admin, first)())

    s.when_rejected(getattr(s.admin, then_)(), reason)


def test_a_status_change_needs_a_listed_market(s: Scenario) -> None:
    s.when_rejected(s.admin.halt("SOL-USDT"), "unknown_market")


# -- delisting --------------------------------------------------------------------------------


def test_delisting_closes_every_open_order_and_releases_its_hold(s: Scenario) -> None:
    s.given(
        s.admin.deposit("alice", "USDT", "1000"),
        s.admin.deposit("bob", "BTC", "1"),
        s.admin.deposit("carol", "ETH", "1"),
        s.alice.buy("90", "1", "bid-1"),
        s.alice.buy("95", "0.5", "bid-2"),
        s.bob.sell("110", "0.3", "ask"),
        s.bob.sell("100", "0.2", "fill"),
        s.alice.buy("100", "0.1", "taker"),  # half-fills bob's "fill"
        s.carol.sell("2000", "1", "eth-ask", market=ETH_USDT),
    )

    then = s.when(s.admin.delist())

    assert then.types == ["OrderClosed"] * 4 + ["MarketStatusChanged"]
    assert then.closed == {
        # bids best first, then asks best first
        "bid-2": ("cancelled", "market_delisted"),
        "bid-1": ("cancelled", "market_delisted"),
        "fill": ("cancelled", "market_delisted"),
        "ask": ("cancelled", "market_delisted"),
    }
    assert then.one("OrderClosed", order_id="fill")["released"] == 10 * 1_000_000
    assert s.balance("alice", "USDT") == (100_000 - 10 * 100, 0)  # paid for the 10 lots it got
    assert s.balance("bob", "BTC")[1] == 0
    assert s.balance("bob", "BTC")[0] == 100_000_000 - 10 * 1_000_000
    # the other market is untouched
    assert s.is_open("eth-ask")
    assert s.ex.status[ETH_USDT] == "trading"
    s.when_rejected(s.alice.buy("100", "0.1", "late"), "market_not_trading")


def test_a_halted_market_can_be_delisted(halted: Scenario) -> None:
    s = halted

    then = s.when(s.admin.delist())

    assert then.closed == {"bid": ("cancelled", "market_delisted"), "ask": ("cancelled", "market_delisted")}
    assert s.balance("alice", "USDT") == (100_000, 0)
    assert s.balance("alice", "BTC") == (100_000_000, 0)
