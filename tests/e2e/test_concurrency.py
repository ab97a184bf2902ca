"""Racing requests: the engine is the single writer, so a double spend cannot happen.

50 concurrent orders each need the user's whole balance: exactly one is accepted, the other 49
are rejected with ``insufficient_funds``, and the balance is held once.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D

from tests.e2e.conftest import Api, fund, ok

N = 50


def test_fifty_orders_racing_for_one_balance(anon: Api, admin: Api, market: str) -> None:
    trader, name, _ = anon.onboard("race")
    fund(admin, name, "USDT", "1000")
    body = {"market": market, "side": "buy", "type": "limit", "price": "10000.00", "quantity": "0.1"}

    def send(_: int) -> dict[str, str]:
        api = Api(trader.url, trader.token)
        r = api.post("/v1/orders?wait=true", body)
        assert r.status_code in (200, 202), r.text
        order: dict[str, str] = r.json()
        while order["status"] == "received":  # past the server's wait limit: read until decided
            time.sleep(0.05)
            order = ok(api.get(f"/v1/orders/{order['order_id']}"))
        return order

    with ThreadPoolExecutor(N) as pool:
        orders = list(pool.map(send, range(N)))
    accepted = [o for o in orders if o["status"] != "rejected"]
    rejected = [o for o in orders if o["status"] == "rejected"]
    assert len(accepted) == 1, accepted
    assert len(rejected) == N - 1 and {o["reject_reason"] for o in rejected} == {"insufficient_funds"}
    usdt = trader.balances()["USDT"]
    assert (D(usdt["available"]), D(usdt["frozen"])) == (0, D(1000))
    assert len({o["order_id"] for o in orders}) == N
