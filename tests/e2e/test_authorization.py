"""Who may call what: every route × anonymous, the owner (a trader), another trader, an admin
and an auditor, against the real server; and malformed tokens are all 401.

Commands are sent without ``wait``: their status (202) says the api let the caller in, which is
what this matrix is about; what the engine then decides is tested elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from spotex.config import DEFAULT_JWT_SECRET
from tests.e2e.conftest import Api, error_code, fund, ok

WHO = ("anon", "other", "admin", "auditor", "owner")  # the owner last: its commands change state
PUBLIC = {w: 200 for w in WHO}
USERS = {"anon": 401, "other": 200, "admin": 200, "auditor": 200, "owner": 200}
ADMIN_CMD = {"anon": 401, "other": 403, "admin": 202, "auditor": 403, "owner": 403}
TRADER_CMD = {"anon": 401, "other": 202, "admin": 403, "auditor": 403, "owner": 202}
OWNER_READ = {"anon": 401, "other": 404, "admin": 404, "auditor": 404, "owner": 200}
OWNER_CMD = {"anon": 401, "other": 404, "admin": 403, "auditor": 403, "owner": 202}
LOG_READ = {"anon": 401, "other": 403, "admin": 200, "auditor": 200, "owner": 403}
EVENT_READ = {"anon": 401, "other": 404, "admin": 200, "auditor": 200, "owner": 200}

Body = Callable[[], Any] | None


def uniq() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def world(anon: Api, admin: Api, auditor: Api, market: str) -> dict[str, Any]:
    owner, owner_name, _ = anon.onboard("own")
    other, other_name, _ = anon.onboard("oth")
    for name in (owner_name, other_name):
        fund(admin, name, "USDT", "100000")
        fund(admin, name, "BTC", "10")
    for symbol, precision in (("ETH", 8),):
        ok(admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": precision}))
    ok(admin.post("/v1/markets?wait=true", {"symbol": "ETH-USDT", "base": "ETH", "quote": "USDT",
                                            "tick_size": "0.01", "lot_size": "0.001"}))
    order = ok(owner.post("/v1/orders?wait=true", {"market": market, "side": "buy", "type": "limit",
                                                   "price": "1.00", "quantity": "1"}))
    withdrawal = ok(owner.post("/v1/withdrawals?wait=true", {"asset": "USDT", "amount": "1",
                                                             "reference": "authz"}))
    clients = {"anon": anon, "owner": owner, "other": other, "admin": admin, "auditor": auditor}
    return {"clients": clients, "order": order["order_id"], "withdrawal": withdrawal["withdrawal_id"],
            "other_name": other_name, "owner_name": owner_name}


def matrix(w: dict[str, Any]) -> list[tuple[str, str, Body, dict[str, int]]]:
    order, wd, market = w["order"], w["withdrawal"], "BTC-USDT"

    def new_user() -> dict[str, str]:
        return {"username": f"m{uniq()}", "password": "password-1"}

    def new_order() -> dict[str, str]:
        return {"market": market, "side": "buy", "type": "limit", "price": "1.00", "quantity": "1"}

    return [
        ("POST", "/v1/users", new_user, {who: 201 for who in WHO}),
        ("GET", "/v1/me", None, USERS),
        ("POST", "/v1/assets", lambda: {"symbol": f"A{uniq()[:6].upper()}", "precision": 2}, ADMIN_CMD),
        ("GET", "/v1/assets", None, PUBLIC),
        ("POST", "/v1/markets", lambda: {"symbol": "ETH-BTC", "base": "ETH", "quote": "BTC",
                                         "tick_size": "0.00001", "lot_size": "0.001"}, ADMIN_CMD),
        ("GET", "/v1/markets", None, PUBLIC),
        ("GET", f"/v1/markets/{market}", None, PUBLIC),
        ("POST", "/v1/markets/ETH-USDT/halt", None, ADMIN_CMD),
        ("POST", "/v1/markets/ETH-USDT/resume", None, ADMIN_CMD),
        ("POST", "/v1/markets/ETH-USDT/delist", None, ADMIN_CMD),
        ("GET", f"/v1/markets/{market}/book", None, PUBLIC),
        ("GET", f"/v1/markets/{market}/trades", None, PUBLIC),
        ("GET", f"/v1/markets/{market}/candles", None, PUBLIC),
        ("GET", f"/v1/markets/{market}/ticker", None, PUBLIC),
        ("POST", "/v1/deposits", lambda: {"username": w["owner_name"], "asset": "USDT", "amount": "1",
                                          "reference": uniq()}, ADMIN_CMD),
        ("POST", "/v1/withdrawals", lambda: {"asset": "USDT", "amount": "1", "reference": uniq()},
         TRADER_CMD),
        ("POST", f"/v1/withdrawals/{wd}/complete", None, ADMIN_CMD),
        ("POST", f"/v1/withdrawals/{wd}/fail", None, ADMIN_CMD),
        ("GET", f"/v1/withdrawals/{wd}", None, OWNER_READ),
        ("POST", "/v1/transfers", lambda: {"to_username": "alice", "asset": "USDT", "amount": "1",
                                           "reference": uniq()}, TRADER_CMD),
        ("GET", "/v1/balances", None, USERS),
        ("GET", "/v1/ledger", None, USERS),
        ("POST", "/v1/orders", new_order, TRADER_CMD),
        ("GET", "/v1/orders", None, USERS),
        ("GET", f"/v1/orders/{order}", None, OWNER_READ),
        ("PATCH", f"/v1/orders/{order}", lambda: {"quantity": "0.5"}, OWNER_CMD),
        ("DELETE", f"/v1/orders/{order}", None, OWNER_CMD),
        ("DELETE", "/v1/orders", None, TRADER_CMD),
        ("GET", "/v1/fills", None, USERS),
        ("GET", f"/v1/events/{order}", None, EVENT_READ),
        ("GET", "/v1/events", None, LOG_READ),
        ("GET", "/v1/notifications", None, USERS),
        ("GET", "/v1/preferences", None, USERS),
        ("PUT", "/v1/preferences", lambda: {"kinds": ["order_filled"], "channels": ["ws"]}, USERS),
        ("PUT", "/v1/preferences/webhook", lambda: {"url": "https://127.0.0.1:9/hook"}, USERS),
        ("GET", "/v1/preferences/webhook", None, USERS),
        ("DELETE", "/v1/preferences/webhook", None, {**USERS, **{w: 204 for w in WHO if w != "anon"}}),
        ("GET", "/healthz", None, PUBLIC),
        ("GET", "/readyz", None, PUBLIC),
        ("GET", "/metrics", None, PUBLIC),
    ]


def test_every_route_by_every_kind_of_caller(world: dict[str, Any], anon: Api) -> None:
    rows = matrix(world)
    failures = []
    for method, path, body, expected in rows:
        for who in WHO:
            api: Api = world["clients"][who]
            kw = {"json": body()} if body is not None else {}
            r = api.http.request(method, path, **kw)
            if r.status_code != expected[who]:
                failures.append(
                    f"{method} {path} as {who}: {r.status_code} (expected {expected[who]}) {r.text[:200]}"
                )
            if r.status_code >= 400:
                assert set(r.json()) == {"error"}, r.text
    assert not failures, "\n".join(failures)
    # the matrix covers every operation of the served OpenAPI document
    spec = ok(anon.get("/openapi.json"))
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    covered = set()
    for method, path, _, _ in rows:
        template = path.replace(world["order"], "{order_id}").replace(world["withdrawal"], "{withdrawal_id}")
        template = template.replace("BTC-USDT", "{symbol}").replace("ETH-USDT", "{symbol}")
        template = template.replace("/v1/events/{order_id}", "/v1/events/{event_id}")
        covered.add((method, template))
    covered.add(("POST", "/v1/auth/token"))  # logging in is tested by every fixture
    assert served - covered == set()


def _token(claims: dict[str, Any], key: str = DEFAULT_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_malformed_tokens_are_401(anon: Api, world: dict[str, Any]) -> None:
    owner = world["clients"]["owner"]
    me = ok(owner.get("/v1/me"))
    now = datetime.now(UTC)
    good = {"sub": me["user_id"], "name": me["username"], "roles": ["trader"], "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=5)).timestamp())}
    assert ok(Api(anon.url, _token(good)).get("/v1/me"))["user_id"] == me["user_id"]  # the control
    unsigned = jwt.encode(good, None, algorithm="none")  # type: ignore[arg-type]
    header_only = _token(good).rsplit(".", 1)[0] + "."
    bad = {
        "wrong algorithm": _token(good, alg="HS512"),
        "alg none": unsigned,
        "signature stripped": header_only,
        "expired": _token({**good, "iat": int((now - timedelta(hours=1)).timestamp()),
                           "exp": int((now - timedelta(minutes=1)).timestamp())}),
        "bad signature": _token(good, key="another-secret-of-at-least-32-characters!"),
        "no exp": _token({k: v for k, v in good.items() if k != "exp"}),
        "no iat": _token({k: v for k, v in good.items() if k != "iat"}),
        "no sub": _token({k: v for k, v in good.items() if k != "sub"}),
        "garbage": "not.a.jwt",
    }
    for what, token in bad.items():
        r = anon.http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert error_code(r, 401) == "not_authenticated", what
        assert r.headers.get("www-authenticate") == "Bearer", what
    for header in ("Basic YWRtaW46YWRtaW4=", "Bearer"):
        r = anon.http.get("/v1/me", headers={"Authorization": header})
        assert error_code(r, 401) == "not_authenticated", header
