"""HTTP api throughput and latency: concurrent connections placing and cancelling orders.

    .venv/bin/python bench/api.py [--url postgresql://postgres@127.0.0.1:5432] [--connections 32]
                                  [--threads 2] [--seconds 15] [--keep]

1. Creates a scratch database (``spotex_bench_api_<pid>``, dropped at the end unless ``--keep``;
   ``--url sqlite`` runs on SQLite files instead) and starts the real ``spotex serve`` on it
   (api + engine + projections + delivery in one process, rate limits off).
2. Onboards and funds one trader per load thread. The load is ``wrk`` (Debian's package; a C
   load generator, so the client's own cost is small next to the server's): each wrk thread is
   one trader whose connections place a resting limit buy (far below the market, so nothing
   trades) and cancel the orders its placements returned — first without ``wait`` (202 once the
   request is in the log), then with ``?wait=true`` (200 once the engine decided and every read
   model shows it). Each place or cancel is one request.
3. In the same run, serves a bare FastAPI endpoint (``async def`` ``GET /ping`` →
   ``{"ok": true}``) with the same uvicorn and hits it with the same wrk settings: the ceiling of
   this Python HTTP stack on this machine, with nothing of spotex in it.

Prints requests/s, p50/p90/p99 latencies per phase, and the CPU time per request of the server
process and of the PostgreSQL backends (from /proc), which a noisy machine distorts far less
than the rates. While each phase runs, ``/readyz`` is sampled every 0.25 s: the engine's lag
(requests appended, not yet decided) and the most-behind read model's lag (positions of its
log), with how long after the load stopped everything had caught up. Figures are recorded in
``docs/performance.md`` with the machine.

An earlier version drove the load from an httpx asyncio loop in this process: httpx itself
saturated at ~200 requests/s here, so it measured the client, not the server.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import print_machine  # noqa: E402
from tests.e2e.conftest import Api, free_port, start_server, stop_server  # noqa: E402

LUA = ROOT / "bench" / "api_orders.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

BARE_APP = textwrap.dedent(
    """
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}
    """
)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def with_children(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers; serve's read-model process)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [pid, *(int(p) for p in children.stdout.split())]


def postgres_backends(database: str | None) -> list[int]:
    if database is None:
        return []
    out = subprocess.run(["pgrep", "-f", f"postgres: .* {database} "], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wrk(url: str, connections: int, threads: int, seconds: float, script: Path | None = None,
        args: list[str] | None = None) -> dict[str, Any]:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
           "--timeout", "30s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    row: dict[str, Any] = {}
    for key, value in re.findall(r"^WRK (\w+)=([\d.]+)", out, re.M):
        row[key] = float(value)
    for line in out.splitlines():
        if "WRK" in line:
            for key, value in re.findall(r"(\w+)=([\d.]+)", line):
                row[key] = float(value)
    if "requests" not in row:  # no script: read wrk's own summary
        m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        assert m, out
        row["requests"] = float(m.group(1))
        row["seconds"] = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
        for q in (50, 90, 99):
            lm = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)", out, re.M)
            if lm:
                scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[lm.group(2)]
                row[f"p{q}"] = float(lm.group(1)) * scale
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        row["errors"] = float(non2xx.group(1)) if non2xx else 0.0
    row["raw"] = out
    return row


class LagSampler(threading.Thread):
    """``/readyz`` every ``every`` seconds until stopped: the engine's lag (requests) and the
    largest lag of any read model (positions of the log it follows), as the api reports them."""

    def __init__(self, url: str, every: float = 0.25) -> None:
        super().__init__(name="lag-sampler", daemon=True)
        self.url, self.every = url, every
        self.engine: list[int] = []
        self.models: list[int] = []
        self.failed = 0
        self._done = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._done.wait(self.every):
                try:
                    engine, models = lags(client.get(self.url + "/readyz").json())
                except (httpx.HTTPError, ValueError, KeyError):
                    self.failed += 1
                    continue
                self.engine.append(engine)
                self.models.append(models)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def summary(self) -> str:
        def spread(values: list[int]) -> str:
            ordered = sorted(values)
            return f"median {ordered[len(ordered) // 2]:,}, max {ordered[-1]:,}" if ordered else "—"

        failed = f", {self.failed} samples unanswered" if self.failed else ""
        return (f"lag while loaded ({len(self.engine)} samples{failed}): engine {spread(self.engine)} "
                f"requests; read models (the most behind) {spread(self.models)} positions")


def lags(ready: dict[str, Any]) -> tuple[int, int]:
    """The engine's lag and the largest read model's lag in a ``/readyz`` answer."""
    models = [p.get("lag", 0) for p in ready.get("projections", {}).values()]
    return int(ready["engine"].get("lag", 0)), int(max(models, default=0))


def report(name: str, row: dict[str, Any], server_cpu: float | None = None, pg_cpu: float | None = None,
           first_cpu: float | None = None) -> dict[str, Any]:
    n = row["requests"]
    row["rps"] = n / row["seconds"]
    errors = int(row.get("errors", 0) + row.get("failed", 0))
    row["phase"] = name
    cpu = ""
    if server_cpu is not None and n:
        row["server_cpu_ms"] = server_cpu * 1000 / n
        cpu = f"   server CPU {row['server_cpu_ms']:.3f} ms/req"
        if first_cpu is not None:
            row["first_cpu_ms"] = first_cpu * 1000 / n
            cpu += f" (the api process {row['first_cpu_ms']:.3f})"
        if pg_cpu is not None:
            row["pg_cpu_ms"] = pg_cpu * 1000 / n
            cpu += f", PostgreSQL {row['pg_cpu_ms']:.3f} ms/req"
    print(f"{name:<34} {int(n):>8} req {row['rps']:>9.1f} req/s   p50 {row.get('p50', float('nan')):7.1f} ms"
          f"   p90 {row.get('p90', float('nan')):7.1f} ms   p99 {row.get('p99', float('nan')):7.1f} ms"
          f"   errors {errors}{cpu}", flush=True)
    return row


def bare_ceiling(connections: int, threads: int, seconds: float) -> dict[str, Any]:
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
            before = cpu_seconds([proc.pid])
            row = wrk(url + "/ping", connections, threads, seconds)
            return report("bare FastAPI GET /ping (ceiling)", row, cpu_seconds([proc.pid]) - before)
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


class Split:
    """The production topology: ``spotex api --workers N``, ``spotex engine``, ``spotex worker``."""

    def __init__(self, db_url: str, api_workers: int, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
        self.env.update({
            "SPOTEX_DATABASE_URL": db_url,
            "SPOTEX_BROKER_URL": os.environ.get("SPOTEX_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            "SPOTEX_PROJECTION_QUEUE": f"spotex_bench_api_{os.getpid()}",
            "SPOTEX_RATE_LIMITS": "off",
            "PYTHONUNBUFFERED": "1",
        })
        self.log = (data_dir / "split.log").open("wb")
        spotex = [sys.executable, "-m", "spotex.cli"]
        subprocess.run([*spotex, "migrate"], env=self.env, cwd=ROOT, check=True, stdout=self.log,
                       stderr=subprocess.STDOUT)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.procs = [
            subprocess.Popen([*spotex, *cmd], env=self.env, cwd=ROOT, stdout=self.log,
                             stderr=subprocess.STDOUT)
            for cmd in (["engine"], ["worker"],
                        ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(api_workers)])
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the split topology was not ready in 60 s; see {data_dir / 'split.log'}")

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in with_children(proc.pid)]

    def stop(self) -> int:
        codes = []
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.wait(timeout=60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        self.log.close()
        return max(abs(c) for c in codes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server URL (no database), or 'sqlite'")
    p.add_argument("--connections", type=int, default=32, help="concurrent HTTP connections")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (one trader each)")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--topology", choices=("serve", "split"), default="serve",
                   help="serve: spotex serve (one process); split: spotex api --workers N + "
                        "spotex engine + spotex worker on RabbitMQ (PostgreSQL only)")
    p.add_argument("--api-workers", type=int, default=2, help="uvicorn workers of spotex api (split)")
    args = p.parse_args()
    if args.topology == "split" and args.url == "sqlite":
        p.error("--topology split needs PostgreSQL")
    if shutil.which("wrk") is None:
        print("bench/api.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    print_machine()
    print(f"api bench: wrk, {args.connections} connections on {args.threads} threads, {args.seconds:g} s "
          f"per phase, backend {'SQLite' if args.url == 'sqlite' else 'PostgreSQL'}, topology "
          f"{args.topology}{f' ({args.api_workers} api workers)' if args.topology == 'split' else ''}",
          flush=True)

    db_url = None if args.url == "sqlite" else scratch_database(args.url)
    database = db_url.rsplit("/", 1)[1] if db_url else None
    env = {"SPOTEX_DATABASE_URL": db_url} if db_url else {}
    tmp = tempfile.TemporaryDirectory()
    if args.topology == "split":
        assert db_url is not None
        split = Split(db_url, args.api_workers, Path(tmp.name))
        url, pids, stop = split.url, split.pids, split.stop
    else:
        server = start_server(Path(tmp.name), env)
        url, pids, stop = server.url, (lambda: with_children(server.proc.pid)), (lambda: stop_server(server))
    rows = []
    try:
        anon = Api(url)
        admin = anon.login("admin", "admin")
        for symbol in ("BTC", "USDT"):
            admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": 8})
        admin.post("/v1/markets?wait=true", {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                                             "tick_size": "0.01", "lot_size": "0.0001"})
        tokens = []
        for _ in range(args.threads):
            username = f"bench{uuid.uuid4().hex[:8]}"
            anon.post("/v1/users?wait=true", {"username": username, "password": "bench-password"})
            admin.post("/v1/deposits?wait=true", {"username": username, "asset": "USDT",
                                                  "amount": "100000000", "reference": "bench"})
            token = anon.login(username, "bench-password").token
            assert token is not None
            tokens.append(token)
        for wait in (False, True):
            procs, backends = pids(), postgres_backends(database)
            before, pg_before = cpu_seconds(procs), cpu_seconds(backends)
            first_before = cpu_seconds(procs[:1])
            sampler = LagSampler(url)
            sampler.start()
            try:
                row = wrk(url, args.connections, args.threads, args.seconds, LUA,
                          ["?wait=true" if wait else "-", *tokens])
            finally:
                sampler.stop()
            unloaded = time.monotonic()
            rows.append(report(f"place+cancel {'wait=true' if wait else 'no wait (202)'}", row,
                               cpu_seconds(procs) - before,
                               cpu_seconds(backends) - pg_before if backends else None,
                               cpu_seconds(procs[:1]) - first_before))
            # let the engine and the read models finish what the phase appended
            deadline = unloaded + 120
            caught_up = None
            while time.monotonic() < deadline:
                if max(lags(httpx.get(url + "/readyz").json())) == 0:
                    caught_up = time.monotonic() - unloaded
                    break
                time.sleep(0.1)
            after = "not caught up within 120 s" if caught_up is None else \
                f"all caught up {caught_up:.1f} s after the load stopped"
            print(f"{'':<34} {sampler.summary()}; {after}", flush=True)
        ready = httpx.get(url + "/readyz").json()
        print(f"after the run: engine lag {ready['engine'].get('lag')}", flush=True)
    finally:
        code = stop()
        tmp.cleanup()
        if db_url and not args.keep:
            drop_database(args.url, db_url)
    rows.append(bare_ceiling(args.connections, args.threads, args.seconds))
    ceiling = rows[-1]["rps"]
    for row in rows[:-1]:
        print(f"{row['phase']}: {row['rps'] / ceiling:.0%} of the ceiling's requests/s")
    print(f"server exit code {code}; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
