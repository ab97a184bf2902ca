"""A trader's day over HTTP against the real server, on SQLite and on PostgreSQL.

Given fresh traders funded by the admin, when they trade through the api, then orders, fills,
fees, balances, the book, trades, candles and withdrawals read back exactly, and every command's
event is in the log. Each test onboards its own users, so tests share one server per backend.
"""

from __future__ import annotations

import time
from decimal import Decimal as D
from typing import Any

from tests.e2e.conftest import Api, error_code, fund, ok


def place(api: Api, wait: bool = True, **order: Any) -> dict[str, Any]:
    body = {"market": "BTC-USDT", "type": "limit", **order}
    if "market" not in order and _market:
        body["market"] = _market[-1]
    r = api.post(f"/v1/orders{'?wait=true' if wait else ''}", body)
    return ok(r, 200 if wait else 202)  # type: ignore[no-any-return]


_market: list[str] = []  # the market place() uses by default in the current test


def use(market: str) -> str:
    _market[:] = [market]
    return market


def user_id_of(api: Api) -> str:
    return str(ok(api.get("/v1/me"))["user_id"])


def dec(balances: dict[str, dict[str, str]], asset: str, column: str = "available") -> D:
    return D(balances[asset][column]) if asset in balances else D(0)


def test_onboarding_login_and_me(anon: Api) -> None:
    trader, username, user_id = anon.onboard("on")
    me = ok(trader.get("/v1/me"))
    assert me == {"user_id": user_id, "username": username, "roles": ["trader"]}
    # the same username again is taken: 409
    assert error_code(anon.post("/v1/users", {"username": username, "password": "password-2"}), 409) == \
        "username_taken"
    # a wrong password is 401, with the error shape
    r = anon.post("/v1/auth/token", {"username": username, "password": "nope-nope"})
    assert error_code(r, 401) == "invalid_credentials"
    # the OAuth2 password form works too (Swagger's Authorize)
    r = anon.http.post("/v1/auth/token", data={"username": username, "password": "password-1",
                                                "grant_type": "password"})
    token = ok(r)
    assert token["token_type"] == "bearer" and 0 < token["expires_in"] <= 3600


def test_markets_are_listed(anon: Api, market: str) -> None:
    m = ok(anon.get(f"/v1/markets/{market}"))
    assert m["status"] == "trading" and D(m["tick_size"]) == D("0.01") and D(m["lot_size"]) == D("0.0001")
    assert market in [x["symbol"] for x in ok(anon.get("/v1/markets"))["data"]]
    assert {"BTC", "USDT"} <= {a["symbol"] for a in ok(anon.get("/v1/assets"))["data"]}
    assert error_code(anon.get("/v1/markets/NOPE-USDT"), 404) == "not_found"


def test_crossing_limit_orders_fills_fees_balances_book_trades_candles(
    anon: Api, admin: Api, auditor: Api, fresh_market: str
) -> None:
    market = use(fresh_market)
    base = market.split("-")[0]
    seller, s_name, _ = anon.onboard("s")
    buyer, b_name, _ = anon.onboard("b")
    fund(admin, s_name, base, "1")
    fund(admin, b_name, "USDT", "100000")
    assert dec(seller.balances(), base) == 1 and dec(buyer.balances(), "USDT") == 100000

    ask = place(seller, side="sell", price="41000.00", quantity="0.5")
    assert ask["status"] == "open" and D(ask["remaining_quantity"]) == D("0.5")
    sb = seller.balances()
    assert (dec(sb, base), dec(sb, base, "frozen")) == (D("0.5"), D("0.5"))

    bid = place(buyer, side="buy", price="41000.00", quantity="0.2")
    assert bid["status"] == "filled"
    assert D(bid["filled_quantity"]) == D("0.2") and D(bid["average_price"]) == D("41000")
    assert D(bid["fee"]) == D("0.0004") and bid["fee_asset"] == base  # taker 0.2% of the base received

    bb, sb = buyer.balances(), seller.balances()
    assert dec(bb, base) == D("0.1996") and dec(bb, "USDT") == D("100000") - D("8200")
    assert dec(bb, "USDT", "frozen") == 0
    assert dec(sb, "USDT") == D("8200") - D("8.2")  # maker 0.1% of the quote received
    assert (dec(sb, base), dec(sb, base, "frozen")) == (D("0.5"), D("0.3"))
    assert D(sb[base]["total"]) == D("0.8")

    order = ok(seller.get(f"/v1/orders/{ask['order_id']}"))
    assert order["status"] == "partially_filled" and D(order["remaining_quantity"]) == D("0.3")
    assert D(order["fee"]) == D("8.2") and order["fee_asset"] == "USDT"

    (taker_fill,) = ok(buyer.get("/v1/fills", params={"market": market}))["data"]
    assert taker_fill["liquidity"] == "taker" and taker_fill["order_id"] == bid["order_id"]
    assert D(taker_fill["price"]) == D("41000") and D(taker_fill["quantity"]) == D("0.2")
    (maker_fill,) = ok(seller.get("/v1/fills", params={"order_id": ask["order_id"]}))["data"]
    assert maker_fill["liquidity"] == "maker" and D(maker_fill["fee"]) == D("8.2")

    book = ok(anon.get(f"/v1/markets/{market}/book", params={"depth": 1000}))
    levels = {D(p): D(q) for p, q in book["asks"]}
    assert levels[D("41000")] == D("0.3")
    assert [D(p) for p, _ in book["asks"]] == sorted(D(p) for p, _ in book["asks"])
    assert [D(p) for p, _ in book["bids"]] == sorted((D(p) for p, _ in book["bids"]), reverse=True)

    trades = ok(anon.get(f"/v1/markets/{market}/trades"))["data"]
    assert any(t["taker_side"] == "buy" and D(t["price"]) == D("41000") and D(t["quantity"]) == D("0.2")
               for t in trades)
    candles = ok(anon.get(f"/v1/markets/{market}/candles", params={"interval": "1m"}))["data"]
    assert candles and sum(D(c["volume"]) for c in candles) >= D("0.2")
    assert D(candles[-1]["high"]) >= D("41000") or any(D(c["high"]) >= D("41000") for c in candles)
    ok(anon.get(f"/v1/markets/{market}/ticker"))

    ledger = ok(buyer.get("/v1/ledger"))["data"]
    assert {e["kind"] for e in ledger} >= {"deposited", "order_accepted", "trade_executed"}

    # every command's event: the owner and the auditor see it, another trader does not
    other, _, _ = anon.onboard("o")
    for api, event_id in ((seller, ask["order_id"]), (buyer, bid["order_id"])):
        event = ok(api.get(f"/v1/events/{event_id}"))
        assert event["log"] == "requests" and event["type"] == "PlaceOrder" and event["event_id"] == event_id
        assert ok(auditor.get(f"/v1/events/{event_id}"))["position"] == event["position"]
        assert error_code(other.get(f"/v1/events/{event_id}"), 404) == "not_found"


def test_market_buy_by_quote_ioc_fok_post_only(anon: Api, admin: Api, fresh_market: str) -> None:
    market = use(fresh_market)
    seller, s_name, _ = anon.onboard("s")
    buyer, b_name, _ = anon.onboard("b")
    fund(admin, s_name, market.split("-")[0], "1")
    fund(admin, b_name, "USDT", "100000")
    ask = place(seller, side="sell", price="42000.00", quantity="0.3")
    ask2 = place(seller, side="sell", price="42100.00", quantity="0.3")
    assert ask["status"] == ask2["status"] == "open"

    # market buy by quote amount: 4200 USDT buys 0.1 at 42000
    m = place(buyer, type="market", side="buy", quote_quantity="4200")
    assert m["status"] == "filled" and D(m["filled_quantity"]) == D("0.1")
    assert D(m["filled_quote"]) == D("4200") and m["quantity"] is None

    # IOC: fills what it can at its limit, the rest expires
    ioc = place(buyer, side="buy", price="42000.00", quantity="1", time_in_force="IOC")
    assert ioc["status"] == "expired" and D(ioc["filled_quantity"]) > 0
    assert dec(buyer.balances(), "USDT", "frozen") == 0

    # FOK: all or nothing
    fok = place(buyer, side="buy", price="42100.00", quantity="5", time_in_force="FOK")
    assert fok["status"] == "rejected" and fok["reject_reason"] == "fok_not_filled"
    fok = place(buyer, side="buy", price="42100.00", quantity="0.1", time_in_force="FOK")
    assert fok["status"] == "filled"

    # post-only refuses to take, and rests when it would not
    po = place(buyer, side="buy", price="42100.00", quantity="0.1", post_only=True)
    assert po["status"] == "rejected" and po["reject_reason"] == "would_take"
    po = place(buyer, side="buy", price="100.00", quantity="0.1", post_only=True)
    assert po["status"] == "open"


def test_amend_with_and_without_loss_of_priority_cancel_and_cancel_all(
    anon: Api, admin: Api, fresh_market: str
) -> None:
    market = use(fresh_market)
    base = market.split("-")[0]
    s1, n1, _ = anon.onboard("s")
    s2, n2, _ = anon.onboard("s")
    buyer, nb, _ = anon.onboard("b")
    for n in (n1, n2):
        fund(admin, n, base, "1")
    fund(admin, nb, "USDT", "100000")

    # a reduction keeps time priority: s1 (first) still fills before s2
    a1 = place(s1, side="sell", price="43000.00", quantity="0.2")
    a2 = place(s2, side="sell", price="43000.00", quantity="0.2")
    amended = ok(s1.patch(f"/v1/orders/{a1['order_id']}?wait=true", {"quantity": "0.1"}))
    assert D(amended["quantity"]) == D("0.1") and amended["status"] == "open"
    assert dec(s1.balances(), base, "frozen") == D("0.1")
    take = place(buyer, side="buy", price="43000.00", quantity="0.1")
    assert take["status"] == "filled"
    assert ok(s1.get(f"/v1/orders/{a1['order_id']}"))["status"] == "filled"
    assert ok(s2.get(f"/v1/orders/{a2['order_id']}"))["status"] == "open"

    # cancel one: its hold is released
    cancelled = ok(s2.delete(f"/v1/orders/{a2['order_id']}?wait=true"))
    assert cancelled["status"] == "cancelled"
    assert dec(s2.balances(), base, "frozen") == 0
    # cancelling it again: not open any more
    assert error_code(s2.delete(f"/v1/orders/{a2['order_id']}?wait=true"), 422) == "order_not_open"

    # an increase loses it: s1's amended order now queues behind s2's
    b1 = place(s1, side="sell", price="44000.00", quantity="0.1")
    b2 = place(s2, side="sell", price="44000.00", quantity="0.1")
    ok(s1.patch(f"/v1/orders/{b1['order_id']}?wait=true", {"quantity": "0.2"}))
    place(buyer, side="buy", price="44000.00", quantity="0.1")
    assert ok(s2.get(f"/v1/orders/{b2['order_id']}"))["status"] == "filled"
    assert ok(s1.get(f"/v1/orders/{b1['order_id']}"))["status"] == "open"

    # an amend off the tick is refused at the edge
    r = s1.patch(f"/v1/orders/{b1['order_id']}", {"price": "44000.001"})
    assert error_code(r, 422) == "invalid_price"

    # another trader's order is a 404
    assert error_code(s2.delete(f"/v1/orders/{b1['order_id']}"), 404) == "not_found"
    assert error_code(s2.get(f"/v1/orders/{b1['order_id']}"), 404) == "not_found"

    # cancel all: every open order of s1 in the market
    c1 = place(s1, side="sell", price="45000.00", quantity="0.1")
    done = ok(s1.delete("/v1/orders", params={"market": market, "wait": "true"}))
    assert set(done["cancelled"]) == {b1["order_id"], c1["order_id"]}
    assert ok(s1.get("/v1/orders", params={"status": "open"}))["data"] == []
    assert dec(s1.balances(), base, "frozen") == 0
    assert len(ok(s1.get("/v1/orders", params={"status": "all"}))["data"]) == 3
    by_status = ok(s1.get("/v1/orders", params={"status": "cancelled", "market": market}))["data"]
    assert {o["order_id"] for o in by_status} == {b1["order_id"], c1["order_id"]}


def test_without_wait_an_order_is_received_then_decided(anon: Api, admin: Api, market: str) -> None:
    use(market)
    trader, name, _ = anon.onboard("t")
    fund(admin, name, "USDT", "1000")
    receipt = place(trader, wait=False, side="buy", price="10.00", quantity="1", client_order_id="w-1")
    assert receipt["status"] == "received" and set(receipt) >= {"order_id", "event_id", "position"}
    assert receipt["order_id"] == receipt["event_id"]
    # a cancel right after the placement applies to it, whatever the reads show yet
    cancel = ok(trader.delete(f"/v1/orders/{receipt['order_id']}"), 202)
    assert cancel["position"] > receipt["position"]
    status = None
    for _ in range(600):
        status = ok(trader.get(f"/v1/orders/{receipt['order_id']}"))["status"]
        if status == "cancelled":
            break
        assert status in ("received", "open")
        time.sleep(0.05)
    assert status == "cancelled"
    # idempotent retry: the original event id; the same key with another body: 409
    again = place(trader, wait=False, side="buy", price="10.00", quantity="1", client_order_id="w-1")
    assert again["event_id"] == receipt["event_id"] and again["position"] == receipt["position"]
    r = trader.post("/v1/orders", {"market": market, "type": "limit", "side": "buy", "price": "11.00",
                                   "quantity": "1", "client_order_id": "w-1"})
    assert error_code(r, 409) == "idempotency_conflict"


def test_validation_at_the_edge(anon: Api, admin: Api, market: str) -> None:
    use(market)
    trader, name, _ = anon.onboard("v")
    base = {"market": market, "side": "buy", "type": "limit", "price": "100.00", "quantity": "1"}
    assert error_code(trader.post("/v1/orders", {**base, "price": 100.0}), 422) == "invalid_value"
    assert error_code(trader.post("/v1/orders", {**base, "quantity": 1}), 422) == "invalid_value"
    assert error_code(trader.post("/v1/orders", {**base, "extra": 1}), 422) == "unknown_field"
    assert error_code(trader.post("/v1/orders", {**base, "price": "100.001"}), 422) == "invalid_price"
    assert error_code(trader.post("/v1/orders", {**base, "quantity": "0.00001"}), 422) == "invalid_quantity"
    assert error_code(trader.post("/v1/orders", {**base, "price": None}), 422) == "invalid_value"
    assert error_code(trader.post("/v1/orders", {**base, "type": "market"}), 422) == "invalid_value"
    r = trader.http.post("/v1/orders", content=b"{not json", headers={"content-type": "application/json"})
    assert error_code(r, 400) == "malformed"
    assert error_code(admin.post("/v1/deposits", {"username": name, "asset": "USDT", "amount": "1.0000001",
                                                  "reference": "x"}), 422) == "invalid_amount"
    # an unknown market goes to the engine, which rejects the order
    o = place(trader, market="DOGE-USDT", side="buy", price="1", quantity="1")
    assert o["status"] == "rejected" and o["reject_reason"] == "unknown_market"
    # insufficient funds is the engine's decision too
    o = place(trader, side="buy", price="100.00", quantity="1")
    assert o["status"] == "rejected" and o["reject_reason"] == "insufficient_funds"


def test_withdrawals_completed_failed_and_rejected(anon: Api, admin: Api, auditor: Api) -> None:
    trader, name, _ = anon.onboard("w")
    fund(admin, name, "USDT", "500")
    w1 = ok(trader.post("/v1/withdrawals?wait=true", {"asset": "USDT", "amount": "100", "reference": "w1"}))
    assert w1["status"] == "pending" and D(w1["amount"]) == 100
    b = trader.balances()
    assert (dec(b, "USDT"), dec(b, "USDT", "frozen")) == (D(400), D(100))
    done = ok(admin.post(f"/v1/withdrawals/{w1['withdrawal_id']}/complete?wait=true"))
    assert done["status"] == "completed"
    b = trader.balances()
    assert (dec(b, "USDT"), dec(b, "USDT", "frozen"), D(b["USDT"]["total"])) == (D(400), 0, D(400))
    # completing twice: not pending any more
    r = admin.post(f"/v1/withdrawals/{w1['withdrawal_id']}/complete?wait=true")
    assert error_code(r, 422) == "withdrawal_not_pending"

    w2 = ok(trader.post("/v1/withdrawals?wait=true", {"asset": "USDT", "amount": "50", "reference": "w2"}))
    failed = ok(admin.post(f"/v1/withdrawals/{w2['withdrawal_id']}/fail?wait=true"))
    assert failed["status"] == "failed"
    assert dec(trader.balances(), "USDT") == D(400) and dec(trader.balances(), "USDT", "frozen") == 0
    assert ok(trader.get(f"/v1/withdrawals/{w2['withdrawal_id']}"))["status"] == "failed"

    w3 = ok(trader.post("/v1/withdrawals?wait=true", {"asset": "USDT", "amount": "1000", "reference": "w3"}))
    assert w3["status"] == "rejected"

    other, _, _ = anon.onboard("o")
    assert error_code(other.get(f"/v1/withdrawals/{w1['withdrawal_id']}"), 404) == "not_found"
    assert error_code(admin.post("/v1/withdrawals/not-a-uuid/complete"), 422) == "invalid_value"
    assert error_code(admin.post(f"/v1/withdrawals/{user_id_of(trader)}/complete"), 404) == "not_found"
    # the events of each command
    for event_id in (w1["withdrawal_id"], w2["withdrawal_id"]):
        ev = ok(trader.get(f"/v1/events/{event_id}"))
        assert ev["type"] == "RequestWithdrawal" and ev["data"]["command"]["reference"] in ("w1", "w2")


def test_transfers_and_deposit_events(anon: Api, admin: Api, auditor: Api) -> None:
    a, an, _ = anon.onboard("x")
    b, bn, _ = anon.onboard("y")
    body = {"username": an, "asset": "USDT", "amount": "10", "reference": "d1"}
    dep = ok(admin.post("/v1/deposits", body), 202)
    assert set(dep) == {"event_id", "position", "deposit_id"}
    # retried: the original event
    again = ok(admin.post("/v1/deposits", body), 202)
    assert again == dep
    t = ok(a.post("/v1/transfers?wait=true", {"to_username": bn, "asset": "USDT", "amount": "4",
                                               "reference": "t1"}))
    assert D(t["amount"]) == 4
    assert dec(a.balances(), "USDT") == 6 and dec(b.balances(), "USDT") == 4
    # the deposit's event concerns the user credited, and the auditor; the admin sent it
    assert ok(a.get(f"/v1/events/{dep['event_id']}"))["type"] == "Deposit"
    assert ok(admin.get(f"/v1/events/{dep['event_id']}"))["data"]["actor"] is not None
    assert error_code(b.get(f"/v1/events/{dep['event_id']}"), 404) == "not_found"


def test_event_log_pages_and_password_hashes_are_redacted(anon: Api, auditor: Api, admin: Api) -> None:
    trader, _, user_id = anon.onboard("r")
    ev = ok(trader.get(f"/v1/events/{user_id}"))
    assert ev["type"] == "RegisterUser" and ev["data"]["command"]["password_hash"] == "[redacted]"
    page = ok(auditor.get("/v1/events", params={"log": "requests", "after": 0, "limit": 5}))
    assert [e["position"] for e in page["data"]] == sorted(e["position"] for e in page["data"])
    assert page["next_cursor"] is not None
    nxt = ok(auditor.get("/v1/events", params={"log": "requests", "cursor": page["next_cursor"], "limit": 5}))
    assert nxt["data"][0]["position"] > page["data"][-1]["position"]
    exchange = ok(admin.get("/v1/events", params={"log": "exchange", "limit": 1000}))["data"]
    assert exchange and all(e["type"] == "Outcome" for e in exchange)
    text = str(exchange) + str(page)
    assert "$argon2" not in text
    # an outcome event by its id, for the auditor
    first = exchange[0]
    assert ok(auditor.get(f"/v1/events/{first['event_id']}"))["position"] == first["position"]
    assert error_code(trader.get("/v1/events"), 403) == "forbidden"
