"""The order hot path (``api.fastpath``) answers exactly as the routes do, or leaves it to them.

Given two fresh apps on in-memory logs — one with the hot path, one without — when the same
script of place and cancel requests (ordinary ones, and every kind of refusal) is sent to each,
then every status, body and appended request is the same; and the hot path served the ordinary
ones (its counter in /metrics), so this test compares two different code paths, not one twice.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.security import Principal, issue_token
from api.services import Services
from spotex.config import Settings
from spotex.wiring import build_logs

MARKET = {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
          "status": "trading"}
ASSETS = {"USDT": {"symbol": "USDT", "precision": 8}, "BTC": {"symbol": "BTC", "precision": 8}}
ALICE = Principal(str(uuid.UUID(int=1)), "alice", ("trader",))
BOB = Principal(str(uuid.UUID(int=2)), "bob", ("trader",))
ADMIN = Principal(str(uuid.UUID(int=3)), "admin", ("admin",))
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Reads:
    """The read models as the order routes use them without ``wait``."""

    def market(self, symbol: str) -> dict[str, Any] | None:
        return dict(MARKET) if symbol == MARKET["symbol"] else None

    def asset(self, symbol: str) -> dict[str, Any] | None:
        return ASSETS.get(symbol)

    def order(self, order_id: str) -> dict[str, Any] | None:
        return None


def buy(**extra: Any) -> dict[str, Any]:
    return {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100.00", "quantity": "0.01",
            **extra}


Answer = tuple[int, Any, str | None, str | None]  # status, body, content-type, content-length


def run_script(fast: bool) -> tuple[list[Answer], list[tuple[str | None, dict[str, Any]]], str]:
    settings = Settings(database_url="memory://")
    logs = build_logs(settings)
    services = Services(settings=settings, logs=logs, reads=Reads(), fast_path=fast)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    auth = {p.username: {"Authorization": "Bearer " + issue_token(settings.jwt_secret, p, now)}
            for p in (ALICE, BOB, ADMIN)}
    answers: list[Answer] = []
    ids: dict[str, str] = {}

    def name(text: str) -> str:  # uuid4 order ids differ between runs: number them
        return UUID_RE.sub(lambda m: ids.setdefault(m.group(0), f"id{len(ids)}"), text)

    with TestClient(create_app(services)) as client:
        def send(method: str, path: str, who: str | None, body: Any = None, raw: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
            h = dict(auth[who]) if who else {}
            h.update(headers or {})
            r = client.request(method, path, headers=h, json=body, content=raw)
            answers.append((r.status_code, name(r.text), r.headers.get("content-type"),
                            r.headers.get("content-length")))
            return r.json()

        first = send("POST", "/v1/orders", "alice", buy())                       # route: learns the market
        second = send("POST", "/v1/orders", "alice", buy(price="101.5"))         # hot path
        send("DELETE", f"/v1/orders/{second['order_id']}", "alice")             # hot path
        send("DELETE", f"/v1/orders/{first['order_id'].upper()}", "alice")      # not canonical: route
        send("DELETE", f"/v1/orders/{first['order_id']}", "bob")                # another's order: 404
        send("POST", "/v1/orders", "alice", buy(price="100.001"))                # off the tick: 422
        send("POST", "/v1/orders", "alice", buy(quantity="0.00001"))             # off the lot: 422
        send("POST", "/v1/orders", "alice", buy(colour="blue"))                  # unknown field: 422
        send("POST", "/v1/orders", "alice", buy(price="1e2"))                    # not a decimal string
        send("POST", "/v1/orders", "alice", {"market": "BTC-USDT", "side": "buy", "type": "limit"})
        send("POST", "/v1/orders", "alice", buy(market="DOGE-USDT"))             # unknown here: engine
        send("POST", "/v1/orders", "alice", None, raw=b"{not json",
             headers={"Content-Type": "application/json"})
        send("POST", "/v1/orders", "alice", None, raw=b'{"market":"BTC-USDT"}',
             headers={"Content-Type": "text/plain"})
        send("POST", "/v1/orders", "admin", buy())                               # not a trader: 403
        send("POST", "/v1/orders", None, buy())                                  # no token: 401
        send("POST", "/v1/orders", "alice", buy(), headers={"Authorization": "Bearer x.y.z"})
        send("POST", "/v1/orders", "bob", buy(client_order_id="k1"))             # keyed
        send("POST", "/v1/orders", "bob", buy(client_order_id="k1"))             # retry: same id
        send("POST", "/v1/orders", "bob", buy(client_order_id="k1", price="99.00"))  # reused key: 409
        by_quote = {"type": "market", "price": None, "quantity": None}
        send("POST", "/v1/orders", "bob", buy(**by_quote, quote_quantity="10.5"))  # route: learns USDT
        send("POST", "/v1/orders", "bob", buy(**by_quote, quote_quantity="10.123456789"))  # precision: 422
        send("POST", "/v1/orders", "bob", buy(**by_quote, quote_quantity="10.25"))  # hot path
        send("DELETE", f"/v1/orders/{uuid.uuid4()}", "bob")                      # unknown order: 404
        metrics = client.get("/metrics").text
    stored = [(r.actor, r.command) for r in logs.read_requests(0, 1000)]
    stored = [(a, {k: (name(v) if isinstance(v, str) else v) for k, v in c.items()}) for a, c in stored]
    return answers, stored, metrics


def test_the_hot_path_answers_and_appends_exactly_as_the_routes_do() -> None:
    fast_answers, fast_log, fast_metrics = run_script(fast=True)
    slow_answers, slow_log, slow_metrics = run_script(fast=False)
    for i, (f, s) in enumerate(zip(fast_answers, slow_answers, strict=True)):
        assert f == s, f"request {i}: hot path {f} != route {s}"
    assert fast_log == slow_log
    statuses = [status for status, *_ in fast_answers]
    assert statuses == [202, 202, 202, 202, 404, 422, 422, 422, 422, 422, 202, 400, 422, 403, 401, 401,
                        202, 202, 409, 202, 422, 202, 404]
    # the script appended: 2 placements, 2 cancels, DOGE, the keyed one, 2 market buys
    assert len(fast_log) == 8
    # the hot path did serve the ordinary requests (and the plain app none)
    # (placements: the second, the keyed one, its retry, its reused key, the last quote-amount
    # buy; cancels: the second order)
    served = re.findall(r'spotex_http_fast_path_requests_total\{route="([^"]+)"\} ([\d.]+)', fast_metrics)
    assert {route: float(n) for route, n in served} == {"/v1/orders": 5, "/v1/orders/{order_id}": 1}
    assert "spotex_http_fast_path_requests_total{" not in slow_metrics
    # and /metrics counts them under the routes' templates either way
    for text in (fast_metrics, slow_metrics):
        m = re.search(r'spotex_http_requests_total\{method="POST",route="/v1/orders",status="202"\} ([\d.]+)',
                      text)
        assert m is not None and float(m.group(1)) == 7


def test_a_failing_append_answers_the_500_of_the_error_shape_on_both_paths() -> None:
    """Given the requests log fails, when an order is placed (by the hot path, which sits in
    front of FastAPI's error middleware, and by the route), then both answer the same JSON 500
    and /metrics counts it."""
    for fast in (True, False):
        settings = Settings(database_url="memory://")
        logs = build_logs(settings)
        services = Services(settings=settings, logs=logs, reads=Reads(), fast_path=fast)  # type: ignore[arg-type]
        token = {"Authorization": "Bearer " + issue_token(settings.jwt_secret, ALICE, datetime.now(UTC))}
        with TestClient(create_app(services)) as client:
            learned = client.post("/v1/orders", headers=token, json=buy())  # the route learns the market
            assert learned.status_code == 202

            def broken(items: Any) -> Any:
                raise RuntimeError("the store is down")

            logs.append_requests = broken  # type: ignore[method-assign]
            r = client.post("/v1/orders", headers=token, json=buy(price="101.00"))
            assert r.status_code == 500, (fast, r.text)
            assert r.json()["error"]["code"] == "internal_error"
            text = client.get("/metrics").text
            assert 'spotex_http_requests_total{method="POST",route="/v1/orders",status="500"} 1.0' in text
