"""Scenarios for money outside trading: deposits, withdrawals, transfers, users and admin rights.

Every rule is written given prior requests → when a command → then these facts, or this
rejection and no change at all (same state hash, same balances).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from scenario import BTC_USDT, Actor, Req, Scenario

from domain.ledger import CUSTODY

BTC = 100_000_000  # units of one BTC
USD = 100  # units of one USDT


@pytest.fixture
def s() -> Scenario:
    return Scenario()


# -- deposits ---------------------------------------------------------------------------------


def test_a_deposit_credits_the_user_from_custody(s: Scenario) -> None:
    then = s.when(s.admin.deposit("alice", "USDT", "1000.50", "wire-1"))

    fact = then.one("Deposited", user_id=s.alice.user_id, asset="USDT", amount=100_050)
    assert fact["reference"] == "wire-1"
    assert fact["postings"] == [[CUSTODY, "USDT", -100_050, 0], [s.alice.user_id, "USDT", 100_050, 0]]
    assert s.balance("alice", "USDT") == (100_050, 0)
    assert s.balance(CUSTODY, "USDT") == (-100_050, 0)


def test_a_deposit_reference_is_used_once_per_user(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "10", "wire-1"))

    s.when_rejected(s.admin.deposit("alice", "USDT", "10", "wire-1"), "duplicate")
    s.when_rejected(s.admin.deposit("alice", "BTC", "1", "wire-1"), "duplicate")
    assert s.balance("alice", "USDT") == (10 * USD, 0)


def test_the_same_deposit_reference_may_be_used_by_another_user(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "10", "wire-1"))

    s.when(s.admin.deposit("bob", "USDT", "10", "wire-1")).one("Deposited", user_id=s.bob.user_id)


def test_the_operator_may_deposit_without_an_actor(s: Scenario) -> None:
    s.when(s.operator.deposit("alice", "BTC", "0.5")).one("Deposited", amount=BTC // 2)


@pytest.mark.parametrize(
    ("username", "asset", "amount", "reason"),
    [
        ("nobody", "USDT", "1", "unknown_user"),
        ("alice", "DOGE", "1", "unknown_asset"),
        ("alice", "USDT", "0.001", "invalid_amount"),  # USDT has 2 decimals
    ],
)
def test_a_deposit_that_cannot_be_credited_is_rejected(
    s: Scenario, username: str, asset: str, amount: str, reason: str
) -> None:
    s.when_rejected(s.admin.deposit(username, asset, amount), reason)


def test_a_trader_may_not_deposit(s: Scenario) -> None:
    s.when_rejected(s.alice.deposit("alice", "USDT", "1000"), "not_allowed")


# -- withdrawals ------------------------------------------------------------------------------


def test_a_withdrawal_holds_the_amount_until_it_completes(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"))

    then = s.when(s.alice.withdraw("USDT", "30", "w1"))
    then.one("WithdrawalRequested", withdrawal_id=s.ids["w1"], amount=3000)
    assert s.balance("alice", "USDT") == (7000, 3000)

    then = s.when(s.admin.complete("w1"))
    fact = then.one("WithdrawalCompleted", withdrawal_id=s.ids["w1"], amount=3000)
    assert fact["postings"] == [[s.alice.user_id, "USDT", 0, -3000], [CUSTODY, "USDT", 3000, 0]]
    assert s.balance("alice", "USDT") == (7000, 0)
    assert s.balance(CUSTODY, "USDT") == (-7000, 0)


def test_a_failed_withdrawal_releases_its_hold(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.withdraw("USDT", "30", "w1"))

    s.when(s.admin.fail("w1")).one("WithdrawalFailed", amount=3000)
    assert s.balance("alice", "USDT") == (10_000, 0)


def test_a_withdrawal_resolves_once(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.withdraw("USDT", "30", "w1"))
    s.given(s.admin.complete("w1"))

    s.when_rejected(s.admin.complete("w1"), "withdrawal_not_pending")
    s.when_rejected(s.admin.fail("w1"), "withdrawal_not_pending")


def test_a_withdrawal_needs_available_funds(s: Scenario) -> None:
    s.given(
        s.admin.deposit("alice", "USDT", "100"),
        s.alice.buy("100", "0.5", "bid"),  # holds 50 USDT
    )

    s.when_rejected(s.alice.withdraw("USDT", "50.01", "w1"), "insufficient_funds")
    s.when(s.alice.withdraw("USDT", "50", "w2")).one("WithdrawalRequested", amount=5000)


def test_a_withdrawal_reference_is_used_once(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.withdraw("USDT", "1", "w1"))

    s.when_rejected(s.alice.withdraw("USDT", "1", "w1"), "duplicate")


def test_only_admins_resolve_withdrawals(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.withdraw("USDT", "30", "w1"))

    s.when_rejected(s.alice.complete("w1"), "not_allowed")
    s.when_rejected(s.bob.fail("w1"), "not_allowed")


def test_an_unknown_withdrawal_cannot_be_resolved(s: Scenario) -> None:
    s.name("ghost", "00000000-0000-0000-0000-000000000001")

    s.when_rejected(s.admin.complete("ghost"), "unknown_withdrawal")


# -- transfers --------------------------------------------------------------------------------


def test_a_transfer_moves_available_funds_between_users(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "BTC", "1"))

    fact = s.when(s.alice.transfer("bob", "BTC", "0.25", "t1")).one("Transferred")
    assert (fact["from_user_id"], fact["to_user_id"], fact["amount"]) == (
        s.alice.user_id, s.bob.user_id, BTC // 4,
    )  # fmt: skip
    assert s.balance("alice", "BTC") == (BTC * 3 // 4, 0)
    assert s.balance("bob", "BTC") == (BTC // 4, 0)


def test_a_transfer_cannot_spend_held_funds(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "BTC", "1"), s.alice.sell("100", "0.8", "ask"))

    s.when_rejected(s.alice.transfer("bob", "BTC", "0.21", "t1"), "insufficient_funds")


@pytest.mark.parametrize(
    ("to", "amount", "reason"),
    [("alice", "1", "self_transfer"), ("nobody", "1", "unknown_user"), ("bob", "0.001", "invalid_amount")],
)
def test_a_transfer_that_cannot_be_made_is_rejected(s: Scenario, to: str, amount: str, reason: str) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"))

    s.when_rejected(s.alice.transfer(to, "USDT", amount, "t1"), reason)


def test_a_transfer_reference_is_used_once(s: Scenario) -> None:
    s.given(s.admin.deposit("alice", "USDT", "100"), s.alice.transfer("bob", "USDT", "1", "t1"))

    s.when_rejected(s.alice.transfer("bob", "USDT", "1", "t1"), "duplicate")


# -- users and admin rights -------------------------------------------------------------------


def test_a_username_is_taken_once(s: Scenario) -> None:
    s.when_rejected(s.operator.register("alice"), "user_exists")


def test_only_an_admin_may_register_a_user_with_other_roles(s: Scenario) -> None:
    s.when_rejected(s.alice.register("mallory", ["admin"]), "not_allowed")

    s.when(s.admin.register("auditor1", ["auditor"])).one("UserRegistered", roles=["auditor"])


@pytest.mark.parametrize(
    "request_of",
    [
        lambda a: a.list_asset("DOGE", 8),
        lambda a: a.list_market("ETH-BTC", "0.0001", "0.01"),
        lambda a: a.halt(BTC_USDT),
        lambda a: a.resume(BTC_USDT),
        lambda a: a.delist(BTC_USDT),
        lambda a: a.deposit("bob", "USDT", "1"),
    ],
    ids=["list_asset", "list_market", "halt", "resume", "delist", "deposit"],
)
def test_a_trader_may_not_do_what_admins_do(s: Scenario, request_of: Callable[[Actor], Req]) -> None:
    s.when_rejected(request_of(s.alice), "not_allowed")


def test_an_admin_without_the_trader_role_may_not_trade(s: Scenario) -> None:
    s.given(s.admin.deposit("admin", "USDT", "100"))

    s.when_rejected(s.admin.buy("100", "0.01", "admin-bid"), "not_allowed")


def test_a_request_from_an_unknown_user_is_refused(s: Scenario) -> None:
    s.when_rejected(s.actor("ghost").buy("100", "0.01", "ghost-bid"), "unknown_user")
