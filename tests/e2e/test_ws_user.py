"""The private ``user`` channel against the real server: each user's events, in order, and no one else's.

Given two traders who each hold an authenticated ``user`` subscription, when they trade against
each other (a maker filled in two parts, a cancel, an IOC that expires, a post-only and an
unfunded order rejected, deposits, a withdrawal completed and one failed), then each receives
exactly its own order status changes in order, its fills, its balances and its notifications —
the last order message equals ``GET /v1/orders/{id}``, the fills equal ``GET /v1/fills``, the last
balance per asset equals ``GET /v1/balances``, the notifications equal ``GET /v1/notifications``
— and never an id of the other's. A random flow between them keeps the same properties.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from projections.delivery import NAMESPACE
from tests.e2e.conftest import Api, Server, fund, ok
from tests.e2e.ws_client import WsClient, is_type
from tests.integration.webhook_receiver import Receiver

TERMINAL = {"filled", "cancelled", "expired", "rejected"}
RANK = {"open": 0, "partially_filled": 1, "filled": 2, "cancelled": 2, "expired": 2, "rejected": 2}


@pytest.fixture()
def pair(anon: Api, admin: Api, market: str) -> tuple[tuple[Api, str], tuple[Api, str]]:
    a, a_name, _ = anon.onboard("wsa")
    b, b_name, _ = anon.onboard("wsb")
    return (a, a_name), (b, b_name)


def place(api: Api, **body: Any) -> dict[str, Any]:
    body.setdefault("market", "BTC-USDT")
    body.setdefault("type", "limit")
    r = api.post("/v1/orders?wait=true", body)
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:  # rejected with wait: the order resource is still there
        return ok(api.get(f"/v1/orders/{r.json()['error']['details']['event_id']}"))
    return r.json()


async def subscribe_user(ws: WsClient, token: str) -> dict[str, Any]:
    await ws.send(op="auth", token=token, id="a")
    await ws.expect(is_type("authenticated"))
    await ws.send(op="subscribe", channel="user", id="u")
    ack = await ws.expect(is_type("subscribed", "user"))
    assert ack["id"] == "u"
    snapshot: dict[str, Any] = await ws.expect(is_type("snapshot", "user"))
    return snapshot


def by_kind(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m[kind] for m in messages if m.get("channel") == "user" and m["type"] == kind]


def trade_alternately(users: dict[str, Api], rng: random.Random, n: int, market: str, mid: int,
                      spread: int, pick: Callable[[str, Api], Api] = lambda who, api: api,
                      ) -> dict[str, list[str]]:
    """n resting or crossing limit orders, the users taking turns (``pick`` chooses the client
    each one goes through), about one in five followed by a cancel of one of the user's orders;
    then each user cancels the rest. Returns each user's order ids."""
    mine: dict[str, list[str]] = {who: [] for who in users}
    names = list(users)
    for i in range(n):
        who = names[i % len(names)]
        api = pick(who, users[who])
        body = {"market": market, "side": rng.choice(("buy", "sell")), "type": "limit",
                "price": f"{mid + rng.randint(-spread, spread):.2f}",
                "quantity": f"{rng.randint(1, 30) / 100:.4f}"}
        r = api.post("/v1/orders", body)
        assert r.status_code == 202, r.text
        mine[who].append(r.json()["order_id"])
        if rng.random() < 0.2:
            api.delete(f"/v1/orders/{rng.choice(mine[who])}")
    for api in users.values():
        ok(api.delete(f"/v1/orders?market={market}&wait=true"))
    return mine


def order_histories(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for o in by_kind(messages, "order"):
        out[o["order_id"]].append(o)
    return out


def check_history(api: Api, order_id: str, history: list[dict[str, Any]], since: int = 0) -> None:
    """Statuses move forward only, positions strictly increase, the last equals the read, and
    every fill after ``since`` (the subscription) came with an order update."""
    positions = [o["position"] for o in history]
    assert positions == sorted(set(positions)), f"{order_id}: positions {positions}"
    statuses = [o["status"] for o in history]
    for before, after in itertools.pairwise(statuses):
        assert before not in TERMINAL and RANK[after] >= RANK[before], f"{order_id}: {statuses}"
    filled = [Decimal(o["filled_quantity"]) for o in history]
    assert filled == sorted(filled), f"{order_id}: filled went back {filled}"
    assert history[-1] == ok(api.get(f"/v1/orders/{order_id}"))
    fills = ok(api.get("/v1/fills", params={"order_id": order_id, "limit": 1000}))["data"]
    assert {f["position"] for f in fills if f["position"] > since} <= set(positions), \
        f"{order_id}: a fill without an update"


def last_position(api: Api) -> int:
    """The position of the last outcome that concerns this user (postings or orders)."""
    ledger = ok(api.get("/v1/ledger", params={"limit": 1}))["data"]
    orders = ok(api.get("/v1/orders", params={"limit": 1000}))["data"]
    return max([e["position"] for e in ledger] + [o["position"] for o in orders] + [0])


async def settle(ws: WsClient, api: Api) -> list[dict[str, Any]]:
    """Everything the stream sent once it reached the user's last position (plus a quiet moment)."""
    head = await asyncio.to_thread(last_position, api)
    async with asyncio.timeout(20):
        while max((m.get("position", 0) for m in ws.seen if m.get("channel") == "user"), default=0) < head:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return list(ws.seen)


def test_each_user_gets_its_own_events_in_order(server: Server, anon: Api, admin: Api,
                                                 pair: tuple[tuple[Api, str], tuple[Api, str]]) -> None:
    (a, a_name), (b, b_name) = pair

    async def scenario() -> None:
        async with WsClient(server.url) as wa, WsClient(server.url) as wb:
            snap_a = await subscribe_user(wa, a.token or "")
            await subscribe_user(wb, b.token or "")
            assert snap_a["balances"] == [] and snap_a["orders"] == []

            def act() -> dict[str, list[str]]:
                for name in (a_name, b_name):
                    fund(admin, name, "USDT", "100000")
                fund(admin, a_name, "BTC", "10")
                o1 = place(a, side="sell", price="100.00", quantity="1.0000")
                o2 = place(b, side="buy", price="100.00", quantity="0.4000")
                o3 = place(b, side="buy", price="101.00", quantity="0.6000")
                o4 = place(a, side="sell", price="105.00", quantity="0.5000")
                ok(a.delete(f"/v1/orders/{o4['order_id']}?wait=true"))
                o5 = place(b, side="buy", price="99.00", quantity="0.5000", time_in_force="IOC")
                o6 = place(b, side="sell", price="110.00", quantity="0.3000")
                o7 = place(a, side="buy", price="110.00", quantity="0.3000", post_only=True)
                o8 = place(a, side="buy", price="110.00", quantity="100000.0000")
                ok(b.delete(f"/v1/orders/{o6['order_id']}?wait=true"))
                w1 = ok(a.post("/v1/withdrawals?wait=true", {"asset": "BTC", "amount": "1",
                                                             "reference": f"w-{uuid.uuid4().hex[:8]}"}))
                ok(admin.post(f"/v1/withdrawals/{w1['withdrawal_id']}/complete?wait=true"))
                w2 = ok(a.post("/v1/withdrawals?wait=true", {"asset": "BTC", "amount": "2",
                                                             "reference": f"w-{uuid.uuid4().hex[:8]}"}))
                ok(admin.post(f"/v1/withdrawals/{w2['withdrawal_id']}/fail?wait=true"))
                ids = lambda *os: [o["order_id"] for o in os]  # noqa: E731
                return {"a": ids(o1, o4, o7, o8), "b": ids(o2, o3, o5, o6)}

            orders = await asyncio.to_thread(act)
            got = {"a": await settle(wa, a), "b": await settle(wb, b)}

            expected_statuses = {
                "a": [["open", "partially_filled", "filled"], ["open", "cancelled"], ["rejected"],
                      ["rejected"]],
                "b": [["filled"], ["filled"], ["expired"], ["open", "cancelled"]],
            }
            for who, api in (("a", a), ("b", b)):
                messages, other = got[who], orders["b" if who == "a" else "a"]
                histories = order_histories(messages)
                assert list(histories) == orders[who], "one history per own order, in placement order"
                for order_id, statuses in zip(orders[who], expected_statuses[who], strict=True):
                    assert [o["status"] for o in histories[order_id]] == statuses, order_id
                    check_history(api, order_id, histories[order_id])
                text = repr(messages)
                assert not any(oid in text for oid in other), f"{who} saw an order of the other user"
                fills = by_kind(messages, "fill")
                rest_fills = ok(api.get("/v1/fills", params={"limit": 1000}))["data"]
                assert fills == sorted(rest_fills, key=lambda f: f["trade_id"]) and len(fills) == 2
                last_balance = {bal["asset"]: bal for bal in by_kind(messages, "balance")}
                for bal in ok(api.get("/v1/balances"))["balances"]:
                    mine = last_balance[bal["asset"]]
                    assert {k: mine[k] for k in bal} == bal
                notes = by_kind(messages, "notification")
                assert notes == ok(api.get("/v1/notifications", params={"limit": 1000}))["data"]
            kinds_a = [n["kind"] for n in by_kind(got["a"], "notification")]
            assert kinds_a == ["deposit_credited", "deposit_credited", "order_filled", "order_cancelled",
                               "order_rejected", "order_rejected", "withdrawal_completed",
                               "withdrawal_failed"]
            kinds_b = [n["kind"] for n in by_kind(got["b"], "notification")]
            assert kinds_b == ["deposit_credited", "order_filled", "order_filled", "order_expired",
                               "order_cancelled"]

    asyncio.run(scenario())


def test_a_random_flow_between_two_users_keeps_streams_exact_and_private(
        server: Server, anon: Api, admin: Api, pair: tuple[tuple[Api, str], tuple[Api, str]]) -> None:
    (a, a_name), (b, b_name) = pair
    for name in (a_name, b_name):
        fund(admin, name, "USDT", "1000000")
        fund(admin, name, "BTC", "1000")

    async def scenario() -> None:
        async with WsClient(server.url) as wa, WsClient(server.url) as wb:
            await subscribe_user(wa, a.token or "")
            await subscribe_user(wb, b.token or "")
            mine = await asyncio.to_thread(trade_alternately, {"a": a, "b": b}, random.Random(5), 150,
                                           "BTC-USDT", 200, 5)
            got = {"a": await settle(wa, a), "b": await settle(wb, b)}
            for who, api in (("a", a), ("b", b)):
                histories = order_histories(got[who])
                assert set(histories) == set(mine[who]), "every own order, and only own orders"
                for order_id, history in histories.items():
                    check_history(api, order_id, history)
                other = mine["b" if who == "a" else "a"]
                text = repr(got[who])
                assert not any(oid in text for oid in other)

    asyncio.run(scenario())


def test_an_order_placed_before_subscribing_has_exact_fill_totals(
        server: Server, admin: Api, pair: tuple[tuple[Api, str], tuple[Api, str]]) -> None:
    """The stream starts from the read model for orders it did not see accepted."""
    (a, a_name), (b, b_name) = pair
    fund(admin, a_name, "BTC", "10")
    fund(admin, b_name, "USDT", "100000")
    resting = place(a, side="sell", price="300.00", quantity="1.0000")
    place(b, side="buy", price="300.00", quantity="0.2500")  # filled before anyone listens

    async def scenario() -> None:
        async with WsClient(server.url) as wa:
            snap = await subscribe_user(wa, a.token or "")
            assert [o["order_id"] for o in snap["orders"]] == [resting["order_id"]]
            assert snap["orders"][0] == ok(a.get(f"/v1/orders/{resting['order_id']}"))
            await asyncio.to_thread(place, b, side="buy", price="300.00", quantity="0.2500")
            await asyncio.to_thread(place, b, side="buy", price="300.00", quantity="0.5000")
            history = order_histories(await settle(wa, a))[resting["order_id"]]
            assert [(o["status"], o["filled_quantity"]) for o in history] == [
                ("partially_filled", "0.5000"), ("filled", "1.0000")]
            check_history(a, resting["order_id"], history, since=snap["position"])

    asyncio.run(scenario())


def test_notifications_follow_preferences_on_the_stream_and_the_webhook(
        server: Server, admin: Api, pair: tuple[tuple[Api, str], tuple[Api, str]]) -> None:
    """Kinds chosen in /v1/preferences reach the user channel and the webhook; others do not."""
    (a, a_name), (b, b_name) = pair
    ok(a.put("/v1/preferences", {"kinds": ["order_filled", "deposit_credited"], "channels": ["ws"]}))
    receiver = Receiver(fail_first=1).start()
    try:
        hook = ok(a.put("/v1/preferences/webhook", {"url": receiver.url}))
        receiver.secret = hook["secret"]
        assert ok(a.get("/v1/preferences"))["channels"] == ["ws", "webhook"]
        assert ok(a.get("/v1/preferences/webhook"))["url"] == receiver.url

        async def scenario() -> list[dict[str, Any]]:
            async with WsClient(server.url) as wa:
                await subscribe_user(wa, a.token or "")

                def act() -> None:
                    fund(admin, a_name, "BTC", "1")
                    fund(admin, b_name, "USDT", "10000")
                    place(a, side="sell", price="400.00", quantity="0.1000")
                    place(b, side="buy", price="400.00", quantity="0.1000")
                    o = place(a, side="sell", price="500.00", quantity="0.1000")
                    ok(a.delete(f"/v1/orders/{o['order_id']}?wait=true"))

                await asyncio.to_thread(act)
                return by_kind(await settle(wa, a), "notification")

        notes = asyncio.run(scenario())
        assert [n["kind"] for n in notes] == ["deposit_credited", "order_filled"]
        receiver.wait_for({str(uuid.uuid5(NAMESPACE, f"{n['notification_id']}:webhook")) for n in notes}, 30)
        time.sleep(0.5)
        assert sorted(receiver.successes().values()) == [1, 1] and all(r.signed for r in receiver.requests)
        got = sorted(receiver.accepted.values(), key=lambda body: body["notification_id"])
        assert [(g["notification_id"], g["kind"], g["data"]) for g in got] == [
            (n["notification_id"], n["kind"], n["data"]) for n in notes]
        assert a.delete("/v1/preferences/webhook").status_code == 204
        assert a.get("/v1/preferences/webhook").status_code == 404
        assert ok(a.get("/v1/preferences"))["channels"] == ["ws"]
    finally:
        receiver.stop()


def test_the_user_channel_needs_a_valid_token(server: Server) -> None:
    async def scenario() -> None:
        async with WsClient(server.url) as ws:
            await ws.send(op="subscribe", channel="user", id=1)
            err = await ws.expect(is_type("error"))
            assert err["id"] == 1 and err["error"]["code"] == "not_authenticated"
            await ws.send(op="auth", token="not-a-jwt", id=2)
            err = await ws.expect(is_type("error"))
            assert err["id"] == 2 and err["error"]["code"] == "not_authenticated"

    asyncio.run(scenario())
