"""HTTP api throughput and latency: N concurrent clients placing and cancelling orders.

    .venv/bin/python bench/api.py [--url postgresql://postgres@127.0.0.1:5432] [--clients 32]
                                  [--seconds 15] [--keep]

1. Creates a scratch database (``spotex_bench_api_<pid>``, dropped at the end unless ``--keep``;
   ``--url sqlite`` runs on SQLite files instead) and starts the real ``spotex serve`` on it
   (api + engine + projections in one process, rate limits off).
2. Onboards and funds one trader per client. Each client then loops for ``--seconds``: place a
   resting limit buy (far below the market, so nothing trades) and cancel it — first without
   ``wait`` (202 at once), then with ``?wait=true`` (200 once the engine decided and the read
   models show it).
3. In the same run, serves a bare FastAPI endpoint (``GET /ping`` → ``{"ok": true}``) with the
   same uvicorn settings and hits it with the same clients: the ceiling of this Python HTTP
   stack on this machine, with nothing of spotex in it.

Prints requests/s and p50/p95/p99 latencies per phase. The clients run in this process (one
asyncio loop): on a small machine they compete with the server for CPU, which the figures
include. Figures are recorded in ``docs/performance.md`` with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import print_machine  # noqa: E402
from tests.e2e.conftest import Api, free_port, start_server, stop_server  # noqa: E402

BARE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}
    """
)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def report(name: str, latencies: list[float], seconds: float, errors: int) -> dict[str, Any]:
    lat = sorted(latencies)
    row = {
        "phase": name,
        "requests": len(lat),
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "mean_ms": (statistics.fmean(lat) * 1000) if lat else float("nan"),
        "errors": errors,
    }
    print(f"{name:<34} {row['requests']:>8} req {row['rps']:>9.1f} req/s   p50 {row['p50_ms']:7.1f} ms   "
          f"p95 {row['p95_ms']:7.1f} ms   p99 {row['p99_ms']:7.1f} ms   errors {errors}", flush=True)
    return row


async def trading_clients(url: str, tokens: list[str], seconds: float, wait: bool) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    suffix = "?wait=true" if wait else ""
    limits = httpx.Limits(max_connections=len(tokens) + 4, max_keepalive_connections=len(tokens) + 4)

    async def client(token: str, http: httpx.AsyncClient) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"}
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await http.post(f"/v1/orders{suffix}", headers=headers, json={
                "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "100.00", "quantity": "0.01"})
            t1 = time.perf_counter()
            if r.status_code not in (200, 202):
                errors += 1
                continue
            latencies.append(t1 - t0)
            order_id = r.json()["order_id"]
            t0 = time.perf_counter()
            r = await http.delete(f"/v1/orders/{order_id}{suffix}", headers=headers)
            t1 = time.perf_counter()
            if r.status_code in (200, 202):
                latencies.append(t1 - t0)
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(t, http) for t in tokens))
    return latencies, errors


async def bare_clients(url: str, n: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await http.get("/ping")
            t1 = time.perf_counter()
            if r.status_code == 200:
                latencies.append(t1 - t0)
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(n)))
    return latencies, errors


def bare_ceiling(clients: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bare_app.py").write_text(BARE_APP)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning",
             "--no-access-log"], cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(url + "/ping").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            lat, errors = asyncio.run(bare_clients(url, clients, seconds))
            return report("bare FastAPI GET /ping (ceiling)", lat, seconds, errors)
        finally:
            proc.terminate()
            proc.wait()


def scratch_database(url: str) -> str:
    import psycopg

    name = f"spotex_bench_api_{os.getpid()}"
    with psycopg.connect(url.rstrip("/") + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{url.rstrip('/')}/{name}"


def drop_database(url: str, db_url: str) -> None:
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(url.rstrip("/") + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server URL (no database), or 'sqlite'")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    print_machine()
    print(f"api bench: {args.clients} clients, {args.seconds:.0f} s per phase, "
          f"backend {'SQLite' if args.url == 'sqlite' else 'PostgreSQL'}", flush=True)

    db_url = None if args.url == "sqlite" else scratch_database(args.url)
    env = {"SPOTEX_DATABASE_URL": db_url} if db_url else {}
    tmp = tempfile.TemporaryDirectory()
    server = start_server(Path(tmp.name), env)
    rows = []
    try:
        anon = Api(server.url)
        admin = anon.login("admin", "admin")
        for symbol in ("BTC", "USDT"):
            admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": 8})
        admin.post("/v1/markets?wait=true", {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                                             "tick_size": "0.01", "lot_size": "0.0001"})
        tokens = []
        for _ in range(args.clients):
            username = f"bench{uuid.uuid4().hex[:8]}"
            anon.post("/v1/users?wait=true", {"username": username, "password": "bench-password"})
            admin.post("/v1/deposits?wait=true", {"username": username, "asset": "USDT", "amount": "1000000",
                                                  "reference": "bench"})
            token = anon.login(username, "bench-password").token
            assert token is not None
            tokens.append(token)
        for wait in (False, True):
            lat, errors = asyncio.run(trading_clients(server.url, tokens, args.seconds, wait))
            rows.append(report(f"place+cancel {'wait=true' if wait else 'no wait (202)'}", lat,
                               args.seconds, errors))
        ready = httpx.get(server.url + "/readyz").json()
        print(f"after the run: engine lag {ready['engine'].get('lag')}", flush=True)
    finally:
        code = stop_server(server)
        tmp.cleanup()
        if db_url and not args.keep:
            drop_database(args.url, db_url)
    rows.append(bare_ceiling(args.clients, args.seconds))
    print(f"server exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
