"""End-to-end fixtures: the REAL server process (``spotex serve``) on a free port, driven over HTTP.

``server`` starts ``python -m spotex.cli serve`` once per test module and backend (SQLite in a
temporary data directory; PostgreSQL in a fresh database from ``postgres_url``), waits for
``/readyz``, and stops it with SIGTERM at the end, requiring a clean exit (the engine drains).
``Api`` is a thin httpx client with helpers to log in and to act as a user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, env_extra: dict[str, str], args: tuple[str, ...] = ()) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    env.update({"SPOTEX_RATE_LIMITS": "off", "PYTHONUNBUFFERED": "1"})
    env.update(env_extra)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spotex.cli", "serve", "--port", str(port), "--data", str(data_dir),
             *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, data_dir)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"spotex serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"spotex serve was not ready in {START_TIMEOUT}s:\n{server.output()}")


def stop_server(server: Server, sig: int = signal.SIGTERM) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


@contextlib.contextmanager
def api_process(data_dir: Path, database_url: str, timeout: float = 90.0) -> Iterator[str]:
    """A ``spotex api`` process (the api alone) on the same PostgreSQL database as a served
    exchange: its base URL once ``/healthz`` answers; stopped with SIGTERM on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    env.update({"SPOTEX_DATABASE_URL": database_url, "SPOTEX_RATE_LIMITS": "off", "PYTHONUNBUFFERED": "1"})
    log_path = data_dir / f"api-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spotex.cli", "api", "--host", "127.0.0.1",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def backend_env(request: pytest.FixtureRequest, backend: str) -> dict[str, str]:
    if backend == "postgres":
        return {"SPOTEX_DATABASE_URL": request.getfixturevalue("postgres_url")}
    return {}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp(f"spotex-{request.param}")
    s = start_server(data_dir, backend_env(request, request.param))
    try:
        yield s
    finally:
        code = stop_server(s)
        assert code == 0, f"spotex serve exited with {code}:\n{s.output()[-5000:]}"


class Api:
    """An HTTP client of the served api, optionally acting as one user."""

    def __init__(self, url: str, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.token = token
        self.http = httpx.Client(base_url=url, headers=headers, timeout=60)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.patch(path, json=json, **kw)

    def put(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.put(path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.delete(path, **kw)

    def login(self, username: str, password: str) -> Api:
        r = self.http.post("/v1/auth/token", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return Api(self.url, r.json()["access_token"])

    def onboard(self, prefix: str = "u") -> tuple[Api, str, str]:
        """A new trader: (client logged in as them, username, user_id)."""
        username = f"{prefix}{uuid.uuid4().hex[:10]}"
        r = self.http.post("/v1/users?wait=true", json={"username": username, "password": "password-1"})
        assert r.status_code == 201, r.text
        return self.login(username, "password-1"), username, r.json()["user_id"]

    def balances(self) -> dict[str, dict[str, str]]:
        r = self.get("/v1/balances")
        assert r.status_code == 200, r.text
        return {b["asset"]: b for b in r.json()["balances"]}


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url} → {r.status_code} {r.text}"
    return r.json()


def error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, f"{r.request.method} {r.request.url} → {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    code: str = body["error"]["code"]
    return code


@pytest.fixture(scope="module")
def anon(server: Server) -> Api:
    return Api(server.url)


@pytest.fixture(scope="module")
def admin(anon: Api) -> Api:
    return anon.login("admin", "admin")


@pytest.fixture(scope="module")
def auditor(anon: Api) -> Api:
    return anon.login("auditor", "auditor")


@pytest.fixture(scope="module")
def market(admin: Api) -> str:
    """BTC-USDT listed (idempotently): tick 0.01, lot 0.0001, fees 0.1% maker / 0.2% taker."""
    for symbol, precision in (("BTC", 8), ("USDT", 6)):
        r = admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": precision})
        assert r.status_code in (200, 409), r.text
    r = admin.post("/v1/markets?wait=true", {
        "symbol": "BTC-USDT", "base": "BTC", "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
        "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.002"})
    assert r.status_code in (200, 409), r.text
    return "BTC-USDT"


def fund(admin: Api, username: str, asset: str, amount: str) -> None:
    ok(admin.post("/v1/deposits?wait=true", {"username": username, "asset": asset, "amount": amount,
                                             "reference": f"dep-{uuid.uuid4().hex[:12]}"}))


def funded_traders(anon: Api, admin: Api, prefix: str, n: int = 2) -> list[Api]:
    """n new traders, each with 100,000,000 USDT and 1,000,000 BTC: clients logged in as them."""
    out = []
    for _ in range(n):
        api, username, _ = anon.onboard(prefix)
        fund(admin, username, "USDT", "100000000")
        fund(admin, username, "BTC", "1000000")
        out.append(api)
    return out


@pytest.fixture
def fresh_market(admin: Api, market: str) -> str:
    """A market of its own for one test (a new base asset against USDT), so that no other test's
    resting orders stand in its book. Same sizes and fees as BTC-USDT."""
    base = f"X{uuid.uuid4().hex[:6].upper()}"
    ok(admin.post("/v1/assets?wait=true", {"symbol": base, "precision": 8}))
    ok(admin.post("/v1/markets?wait=true", {
        "symbol": f"{base}-USDT", "base": base, "quote": "USDT", "tick_size": "0.01", "lot_size": "0.0001",
        "min_notional": "1", "maker_fee": "0.001", "taker_fee": "0.002"}))
    return f"{base}-USDT"
