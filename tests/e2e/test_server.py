"""The server process itself: rate limits (in process and on Redis), the production checks, a
clean shutdown that drains every acknowledged request, readiness and metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from spotex.config import Settings
from spotex.wiring import build_logs
from tests.e2e.conftest import ROOT, Api, error_code, ok, start_server, stop_server


def _burst(api: Api, n: int) -> list[httpx.Response]:
    return [api.get("/v1/me") for _ in range(n)]


def test_rate_limits_per_user_answer_429_with_retry_after(tmp_path: Path) -> None:
    # per minute, so that a slow machine does not refill the bucket during the burst
    server = start_server(tmp_path, {"SPOTEX_RATE_LIMITS": "user=5/m,ip=1000/s"})
    try:
        alice = Api(server.url).login("alice", "alice")
        statuses = [r.status_code for r in _burst(alice, 12)]
        assert 5 <= statuses.count(200) <= 6 and 429 in statuses
        r = next(r for r in _burst(alice, 3) if r.status_code == 429)
        assert error_code(r, 429) == "rate_limited" and int(r.headers["retry-after"]) >= 1
        # another user has a budget of their own
        assert Api(server.url).login("bob", "bob").get("/v1/me").status_code == 200
    finally:
        assert stop_server(server) == 0


@pytest.mark.redis
def test_rate_limits_per_ip_on_redis(tmp_path: Path, redis_url: str) -> None:
    server = start_server(tmp_path, {"SPOTEX_RATE_LIMITS": "ip=8/m", "SPOTEX_REDIS_URL": redis_url})
    try:
        anon = Api(server.url)
        statuses = [anon.get("/v1/markets").status_code for _ in range(20)]
        # the bucket lives in Redis (a run in the last minute may have used part of it)
        assert statuses.count(429) >= 12 and statuses.count(200) <= 8
        assert anon.get("/healthz").status_code == 200  # operations are never limited
    finally:
        assert stop_server(server) == 0


def _serve_fails(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": "/usr/bin:/bin", "SPOTEX_ENV": "production", **env}
    return subprocess.run(
        [sys.executable, "-m", "spotex.cli", "serve", "--port", "0", "--data", str(tmp_path)],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=60,
    )


def test_production_refuses_default_key_and_default_passwords(tmp_path: Path) -> None:
    r = _serve_fails(tmp_path, {})
    assert r.returncode == 2 and "SPOTEX_JWT_SECRET" in r.stderr
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"username": "admin", "password": "admin", "roles": ["admin"]}]}))
    r = _serve_fails(tmp_path, {"SPOTEX_JWT_SECRET": "x" * 40, "SPOTEX_USERS_FILE": str(users)})
    assert r.returncode == 2 and "default password" in r.stderr


def test_users_file_and_clean_shutdown_drain_every_acknowledged_request(tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [
        {"username": "ops", "password": "ops-secret-1", "roles": ["admin"]},
        {"username": "carol", "password": "carol-secret-1", "roles": ["trader"]},
    ]}))
    data = tmp_path / "data"
    server = start_server(data, {"SPOTEX_USERS_FILE": str(users)})
    acknowledged = []
    try:
        assert "carol (trader)" in server.output() and "carol-secret-1" not in server.output()
        ops = Api(server.url).login("ops", "ops-secret-1")
        assert Api(server.url).http.post("/v1/auth/token", json={"username": "alice", "password": "alice"}
                                         ).status_code == 401  # no embedded defaults with a users file
        for symbol in ("BTC", "USDT"):
            ok(ops.post("/v1/assets", {"symbol": symbol, "precision": 8}), 202)
        carol = Api(server.url).login("carol", "carol-secret-1")
        for i in range(150):
            r = carol.post("/v1/orders", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                          "price": "1", "quantity": "1", "client_order_id": f"c{i}"})
            acknowledged.append(ok(r, 202)["position"])
    finally:
        code = stop_server(server, signal.SIGINT)
    assert code == 0, server.output()
    assert "spotex stopped" in server.output()
    logs = build_logs(Settings(data_dir=data))
    assert logs.last_request_position() == max(acknowledged)
    assert logs.engine_position() == logs.last_request_position()  # the engine drained everything


def test_readiness_and_metrics(tmp_path: Path) -> None:
    server = start_server(tmp_path, {})
    try:
        anon = Api(server.url)
        ok(anon.get("/healthz"))
        ready = ok(anon.get("/readyz"))
        assert ready["ready"] is True and ready["stores"] == {"event_store": "ok", "read_store": "ok"}
        assert ready["engine"]["lag"] == 0 and ready["process"]["engine_thread"] == "ok"
        alice = anon.login("alice", "alice")
        ok(alice.get("/v1/balances"))
        text = anon.get("/metrics").text
        assert 'spotex_http_requests_total{method="GET",route="/v1/balances",status="200"}' in text
        assert "spotex_http_request_duration_seconds_bucket" in text
        assert "spotex_engine_batch_size_count" in text and "spotex_engine_lag" in text
        assert "spotex_projection_lag{" in text
        unknown = anon.get(f"/v1/{uuid.uuid4().hex}")
        assert error_code(unknown, 404) == "not_found"
    finally:
        assert stop_server(server) == 0


def test_not_ready_answers_503_when_a_store_fails_or_a_read_model_stopped() -> None:
    """Readiness in process (a broken store is hard to stage in a live server): the same app."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.services import Services

    class Reads:
        def __init__(self, status: Any) -> None:
            self._status = status

        def status(self) -> Any:
            if isinstance(self._status, Exception):
                raise self._status
            return self._status

    logs = build_logs(Settings(database_url="memory://"))
    stopped = {"orders": {"position": 3, "lag": 2, "error": {"position": 4, "message": "boom"}}}
    for reads, problem in ((Reads(OSError("gone")), "the read store cannot be read"),
                           (Reads(stopped), "read model orders stopped on an error")):
        app = create_app(Services(settings=Settings(database_url="memory://"), logs=logs, reads=reads))
        with TestClient(app) as client:
            r = client.get("/readyz")
            assert r.status_code == 503 and problem in r.json()["problems"]
            assert client.get("/healthz").status_code == 200
