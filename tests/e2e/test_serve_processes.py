"""``spotex serve`` on PostgreSQL: the engine and the read models run in child processes.

Given a served exchange on the real PostgreSQL, when traders place orders and serve is stopped
with SIGINT, then every acknowledged request was decided and every read model shows it; when a
child is killed, it is started again and goes on from what was committed; when serve itself is
SIGKILLed, its children do not linger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from api.reads import ProjectionReads
from projections.store import open_read_store
from spotex.config import Settings
from spotex.wiring import build_logs
from tests.e2e.conftest import Api, ok, start_server, stop_server

pytestmark = pytest.mark.postgres


def children(pid: int, seconds: float = 20) -> dict[str, int]:
    """serve's children by name (``/proc/PID/comm``, which each names itself once started)."""
    deadline = time.monotonic() + seconds
    while True:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        named = {}
        for child in map(int, out):
            try:
                named[Path(f"/proc/{child}/comm").read_text().strip()] = child
            except FileNotFoundError:
                continue
        if {"spotex-engine", "spotex-models"} <= named.keys() or time.monotonic() > deadline:
            return named
        time.sleep(0.05)


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited; its parent (gone) cannot reap it yet
            return True
        time.sleep(0.05)
    return False


def place(api: Api, n: int, prefix: str) -> list[int]:
    positions = []
    for i in range(n):
        r = api.post("/v1/orders", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                    "price": "1", "quantity": "1", "client_order_id": f"{prefix}{i}"})
        positions.append(ok(r, 202)["position"])
    return positions


def listed(admin: Api) -> None:
    for symbol in ("BTC", "USDT"):
        ok(admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": 8}))
    ok(admin.post("/v1/markets?wait=true", {"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                                            "tick_size": "0.01", "lot_size": "0.0001"}))
    ok(admin.post("/v1/deposits?wait=true", {"username": "alice", "asset": "USDT", "amount": "1000",
                                             "reference": "processes"}))


def test_children_do_the_work_and_sigint_drains_every_acknowledged_request(
        tmp_path: Path, postgres_url: str) -> None:
    server = start_server(tmp_path, {"SPOTEX_DATABASE_URL": postgres_url})
    try:
        named = children(server.proc.pid)
        assert {"spotex-engine", "spotex-models"} <= named.keys(), named
        anon = Api(server.url)
        listed(anon.login("admin", "admin"))
        alice = anon.login("alice", "alice")
        # wait=true answers once the engine committed and every read model shows the outcome:
        # both come from the children now
        order = ok(alice.post("/v1/orders?wait=true", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                                        "price": "1", "quantity": "1"}))
        assert order["status"] == "open", order
        assert ok(alice.get(f"/v1/orders/{order['order_id']}"))["status"] == "open"
        acknowledged = place(alice, 200, "drain")
        metrics = anon.get("/metrics").text
        assert "spotex_engine_batch_size_count" in metrics
        batches = [line for line in metrics.splitlines() if line.startswith("spotex_engine_batch_size_count")]
        assert float(batches[0].split()[-1]) > 0  # relayed from the engine's process
    finally:
        code = stop_server(server, signal.SIGINT)
    assert code == 0, server.output()
    assert "spotex stopped" in server.output()
    assert gone_within(named["spotex-engine"], 5) and gone_within(named["spotex-models"], 5)
    settings = Settings(database_url=postgres_url)
    logs = build_logs(settings, create_tables=False)
    assert logs.last_request_position() == max(acknowledged)
    assert logs.engine_position() == logs.last_request_position()  # the engine drained everything
    store = open_read_store(settings)
    try:  # and the read models followed it to the end before serve exited
        assert ProjectionReads(store, logs).projected_position() == logs.last_outcome_position()
    finally:
        store.close()


def readyz_until(server_url: str, check: Callable[[httpx.Response], bool], seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        try:
            r = httpx.get(server_url + "/readyz", timeout=30)  # its store checks wait ≤ 5 s each
            if check(r) or time.monotonic() > deadline:
                return r
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def listed_for_alice(server: Any) -> tuple[dict[str, int], Api]:
    """serve's children by name, and alice logged in, once BTC-USDT is listed and she is funded."""
    named = children(server.proc.pid)
    anon = Api(server.url)
    listed(anon.login("admin", "admin"))
    return named, anon.login("alice", "alice")


def started_again(server: Any, name: str, old: int, seconds: float = 30) -> int:
    """The pid of serve's child ``name`` once it is another process than ``old``."""
    deadline = time.monotonic() + seconds
    while True:
        pid = children(server.proc.pid, 1).get(name)
        if pid is not None and pid != old:
            return pid
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.1)


def test_a_killed_read_model_child_is_started_again_and_catches_up(
        tmp_path: Path, postgres_url: str) -> None:
    """Given serve on PostgreSQL whose read-model child is SIGKILLed (the OOM killer, an
    operator), when orders come in, then the engine still decides them (it wakes the dead
    child's flag without waiting for it); serve starts the child again, which resumes each read
    model at its tracking row and shows every order; /readyz is ok again; SIGTERM still stops
    serve after draining every acknowledged request."""
    server = start_server(tmp_path, {"SPOTEX_DATABASE_URL": postgres_url})
    try:
        named, alice = listed_for_alice(server)
        os.kill(named["spotex-models"], signal.SIGKILL)
        acknowledged = place(alice, 20, "after-kill")
        started_again(server, "spotex-models", named["spotex-models"])
        r = readyz_until(server.url, lambda r: r.status_code == 200, 60)
        assert r.status_code == 200, r.text
        assert r.json()["engine"]["position"] >= max(acknowledged), r.text
        assert r.json()["process"] == {"engine_thread": "ok", "projections_thread": "ok"}, r.text
        # wait=true answers once every read model shows it: the new child is projecting
        ok(alice.post("/v1/orders?wait=true", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                               "price": "1", "quantity": "1", "client_order_id": "shown"}))
        shown = ok(alice.get("/v1/orders?status=all&limit=1000"))["data"]
        ids = {o["client_order_id"] for o in shown}
        assert {f"after-kill{i}" for i in range(20)} | {"shown"} <= ids, shown
        killed = f"spotex-models (pid {named['spotex-models']}) was killed by signal 9"
        assert killed in server.output(), server.output()
    finally:
        stop_server(server, signal.SIGTERM)
    assert server.proc.returncode == 0 and "spotex stopped" in server.output(), server.output()
    logs = build_logs(Settings(database_url=postgres_url), create_tables=False)
    assert logs.engine_position() == logs.last_request_position() >= max(acknowledged)


def test_a_killed_engine_child_is_started_again_from_the_logs(tmp_path: Path, postgres_url: str) -> None:
    """Given serve on PostgreSQL whose engine child is SIGKILLed, when orders are acknowledged
    while it is down, then a new engine recovers from the committed logs and decides each of them
    once; when serve itself is SIGKILLed afterwards, none of its children lingers."""
    server = start_server(tmp_path, {"SPOTEX_DATABASE_URL": postgres_url})
    try:
        named, alice = listed_for_alice(server)
        before = place(alice, 20, "before-kill")
        os.kill(named["spotex-engine"], signal.SIGKILL)
        during = place(alice, 20, "engine-down")  # acknowledged: appended to the requests log
        engine = started_again(server, "spotex-engine", named["spotex-engine"])
        r = readyz_until(server.url, lambda r: r.status_code == 200 and r.json()["engine"]["lag"] == 0, 60)
        assert r.status_code == 200 and r.json()["engine"]["position"] >= max(during), r.text
        # each acknowledged order decided once: a repeat of one answers with the same order
        order = ok(alice.post("/v1/orders?wait=true", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                                       "price": "1", "quantity": "1",
                                                       "client_order_id": "engine-down0"}))
        shown = ok(alice.get("/v1/orders?status=all&limit=1000"))["data"]
        ids = [o["client_order_id"] for o in shown
               if (o["client_order_id"] or "").startswith(("before-kill", "engine-down"))]
        expected = [f"before-kill{i}" for i in range(20)] + [f"engine-down{i}" for i in range(20)]
        assert sorted(ids) == sorted(expected), ids
        assert [o["order_id"] for o in shown if o["client_order_id"] == "engine-down0"] == [order["order_id"]]
        killed = f"spotex-engine (pid {named['spotex-engine']}) was killed by signal 9"
        assert killed in server.output(), server.output()
        assert server.output().count("engine recovered at seq") == 2, server.output()
        models = children(server.proc.pid)["spotex-models"]
        server.proc.kill()  # SIGKILL: no orderly stop; the children must notice and stop
        server.proc.wait()
        assert gone_within(engine, 10), "the engine process outlived serve"
        assert gone_within(models, 10), "the read-model process outlived serve"
    finally:
        stop_server(server)
    logs = build_logs(Settings(database_url=postgres_url), create_tables=False)
    assert logs.engine_position() == logs.last_request_position() >= max(before + during)


@pytest.mark.parametrize("outage", [
    "short",  # the library's own retries of a read ride it out
    pytest.param("long", marks=pytest.mark.slow),  # until they give up: the engine rebuilds itself
])
def test_serve_waits_out_a_lost_database_and_goes_on(
        outage: str, tmp_path: Path, make_postgres_database: Callable[[], AbstractContextManager[str]],
) -> None:
    """Given serve on PostgreSQL, when the database refuses connections and drops the ones it
    had (a restart, a failover), then reads answer 503 ``unavailable`` with ``Retry-After`` and
    /readyz says not ready (in seconds); when it is back, the same processes go on — after a long
    outage the engine rebuilt from the committed logs, as a restart would — and a command is
    decided and shown as before."""
    with make_postgres_database() as url:
        name = url.rsplit("/", 1)[1]
        admin_url = url.rsplit("/", 1)[0] + "/postgres"
        server = start_server(tmp_path, {"SPOTEX_DATABASE_URL": url})
        try:
            named = children(server.proc.pid)
            anon = Api(server.url)
            listed(anon.login("admin", "admin"))
            alice = anon.login("alice", "alice")
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                    sql.Identifier(name)))
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                              (name,))
                try:
                    r = alice.get("/v1/balances")
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "unavailable" and r.headers["Retry-After"] == "1"
                    # a command is not acknowledged: 503, and its retry later is applied once
                    lost = {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1",
                            "quantity": "1", "client_order_id": "in-the-outage"}
                    r = alice.post("/v1/orders", lost)
                    assert r.status_code == 503, r.text
                    assert readyz_until(server.url, lambda r: r.status_code == 503, 20).status_code == 503
                    deadline = time.monotonic() + (120 if outage == "long" else 2)
                    while (time.monotonic() < deadline
                           and "engine: the database failed" not in server.output()):
                        time.sleep(0.5)
                finally:
                    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                        sql.Identifier(name)))
            r = readyz_until(server.url, lambda r: r.status_code == 200, 90)
            assert r.status_code == 200, r.text
            order = ok(alice.post("/v1/orders?wait=true", {"market": "BTC-USDT", "side": "buy",
                                                           "type": "limit", "price": "1", "quantity": "1"}))
            assert order["status"] == "open", order
            retried = ok(alice.post("/v1/orders?wait=true", lost))
            again = ok(alice.post("/v1/orders?wait=true", lost))
            assert retried["order_id"] == again["order_id"] and retried["status"] == "open", (retried, again)
            assert children(server.proc.pid) == named  # the same processes went on
        finally:
            code = stop_server(server, signal.SIGINT)
        assert code == 0, server.output()
        if outage == "long":
            assert "engine: the database failed" in server.output()
            assert server.output().count("engine recovered at seq") == 2, server.output()
