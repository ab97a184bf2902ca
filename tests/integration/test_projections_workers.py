"""The production workers: ``spotex worker`` processes on PostgreSQL and RabbitMQ.

- A worker (dramatiq actors + scheduler) keeps every read model caught up with a live flow; a
  rebuild message delivered twice rebuilds once.
- Slow (``SPOTEX_SLOW=1``): workers killed with SIGKILL at random points during a busy flow and
  restarted; at the end the read models equal a rebuild from scratch. The same again with every
  message delivered twice (the test is the scheduler and sends each message twice), and with
  rebuild messages in the middle of it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from projections import queries as q
from projections.rebuild import rebuild, verify
from projections.registry import PROJECTIONS
from projections.store import ReadStore, open_read_store
from projections.worker import declare_actors, make_broker, run_scheduler
from spotex.config import Settings
from spotex.wiring import build_logs
from tests.integration.conftest import ExchangeFlow, fresh_backend
from tests.integration.test_projections_ops import dump

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


class Workers:
    """``spotex worker`` subprocesses for one database and one queue."""

    def __init__(self, settings: Settings, broker_url: str, queue: str, logdir: Path,
                 scheduler: bool = True) -> None:
        assert settings.database_url
        self.env = {
            **os.environ,
            "SPOTEX_DATABASE_URL": settings.database_url,
            "SPOTEX_BROKER_URL": broker_url,
            "SPOTEX_PROJECTION_QUEUE": queue,
            "SPOTEX_WORKER_THREADS": "4",
            "SPOTEX_WORKER_SCHEDULER": "1" if scheduler else "0",
        }
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def running(self) -> bool:
        """Whether the latest worker got as far as serving messages (it says so on start)."""
        path = self.logdir / f"worker-{self.started}.log"
        return path.exists() and b"spotex worker:" in path.read_bytes()

    def start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.logdir / f"worker-{self.started}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen([sys.executable, "-m", "spotex.cli", "worker"], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def pg_settings(tmp_path: Path, make_postgres_database: Callable[[], AbstractContextManager[str]]
                ) -> Iterator[Settings]:
    with fresh_backend("postgres", tmp_path, make_postgres_database) as settings:
        yield settings


@pytest.fixture
def queue(broker_url: str) -> Iterator[str]:
    name = f"spotex_projections_test_{uuid.uuid4().hex[:10]}"
    yield name
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = conn.channel()
        for suffix in ("", ".DQ", ".XQ"):
            channel.queue_delete(queue=name + suffix)
    finally:
        conn.close()


def wait_caught_up(store: ReadStore, flow: ExchangeFlow, timeout: float) -> float:
    started = time.monotonic()
    head_ex = flow.logs.last_outcome_position()
    head_rq = flow.logs.last_request_position()
    while True:
        status = q.positions(store)
        if all(row["position"] >= (head_rq if row["source"] == "requests" else head_ex)
               for row in status.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not caught up after {timeout} s: {status}")
        time.sleep(0.05)


def assert_equal_to_a_rebuild(store: ReadStore, flow: ExchangeFlow) -> None:
    live = dump(store)
    assert all(not diffs for diffs in verify(store, flow.logs, list(PROJECTIONS.values())).values())
    rebuild(store, flow.logs, list(PROJECTIONS.values()))
    assert dump(store) == live


def test_a_worker_keeps_read_models_caught_up_and_a_duplicated_rebuild_runs_once(
    pg_settings: Settings, broker_url: str, queue: str, tmp_path: Path,
) -> None:
    logs = build_logs(pg_settings, create_tables=False)
    store = open_read_store(pg_settings)
    workers = Workers(pg_settings, broker_url, queue, tmp_path)
    broker = make_broker(broker_url)
    try:
        workers.start()
        flow = ExchangeFlow(logs, seed=21, step=timedelta(minutes=1))
        flow.bootstrap()
        for _ in range(4):
            flow.trade(60)
            flow.run()
        wait_caught_up(store, flow, 120)
        actors = declare_actors(broker, queue=queue)
        with store.read() as tx:
            generation = tx.fetchone("SELECT generation FROM projection_tracking WHERE name = 'orders'")[0]
        token = uuid.uuid4().hex
        actors.rebuild.send("orders", token)
        actors.rebuild.send("orders", token)
        deadline = time.monotonic() + 120
        while True:
            with store.read() as tx:
                done = tx.fetchall("SELECT name FROM projection_rebuilds WHERE token = ?", (token,))
                gen = tx.fetchone("SELECT generation FROM projection_tracking WHERE name = 'orders'")[0]
            if done and gen != generation:
                break
            assert time.monotonic() < deadline, "the rebuild message was not processed"
            time.sleep(0.1)
        assert done == [("orders",)]
        flow.trade(50)
        flow.run()
        wait_caught_up(store, flow, 120)
    finally:
        workers.stop_all()
        broker.close()
    assert_equal_to_a_rebuild(store, flow)
    store.close()


def _kill_loop(
    settings: Settings, broker_url: str, queue: str, tmp_path: Path, duplicate: bool, rounds: int
) -> dict[str, Any]:
    logs = build_logs(settings, create_tables=False)
    store = open_read_store(settings)
    rng = random.Random(int(os.environ.get("SPOTEX_KILL_SEED", "77")) + duplicate)
    workers = Workers(settings, broker_url, queue, tmp_path, scheduler=not duplicate)
    broker = make_broker(broker_url)
    actors = declare_actors(broker, queue=queue)
    stop = threading.Event()
    sent = {"messages": 0}

    def send(name: str) -> None:
        for _ in range(2):  # every message delivered twice
            actors.catch_up.send(name)
            sent["messages"] += 1

    scheduler = None
    if duplicate:
        scheduler = threading.Thread(target=run_scheduler, args=(store, logs, send, stop),
                                     kwargs={"interval": 0.05}, daemon=True)
        scheduler.start()
    flow = ExchangeFlow(logs, seed=31 + duplicate, step=timedelta(seconds=20))
    flow.bootstrap()
    flow.run()
    producing = threading.Event()
    producing.set()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(rounds * 3):
                flow.trade(40)
                flow.run()
                if i % 7 == 3:  # rebuild messages in the middle of it all (twice each)
                    token = uuid.uuid4().hex
                    name = rng.choice(list(PROJECTIONS))
                    actors.rebuild.send(name, token)
                    actors.rebuild.send(name, token)
                time.sleep(rng.uniform(0, 0.2))
        except BaseException as exc:
            errors.append(exc)
        finally:
            producing.clear()

    producer = threading.Thread(target=produce)
    producer.start()
    kills = serving = 0
    started = time.monotonic()
    try:
        proc = workers.start()
        while producing.is_set():
            up = time.monotonic() + 20
            while not workers.running() and time.monotonic() < up:  # started: now kill it at work
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 1.5))
            serving += workers.running()
            workers.kill(proc)
            kills += 1
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 1))  # down for a while: lag builds up
            proc = workers.start()
        producer.join()
        assert not errors, errors
        catch = wait_caught_up(store, flow, 600)
    finally:
        stop.set()
        workers.stop_all()
        producer.join(60)
        broker.close()
    figures = {
        "kills": kills,
        "kills_while_serving": serving,
        "requests": logs.last_request_position(),
        "outcomes": logs.last_outcome_position(),
        "seconds": round(time.monotonic() - started, 1),
        "caught_up_after_last_request_s": round(catch, 1),
        "messages_sent_by_test": sent["messages"],
    }
    # a killed rebuild left its copies behind; the next rebuild of that projection cleans them
    assert_equal_to_a_rebuild(store, flow)
    assert all(row["error"] is None for row in q.positions(store).values())
    store.close()
    print(f"\nkill loop (duplicate={duplicate}): {figures}")
    return figures


@pytest.mark.slow
def test_sigkilled_workers_restart_and_end_equal_to_a_rebuild(
    pg_settings: Settings, broker_url: str, queue: str, tmp_path: Path,
) -> None:
    figures = _kill_loop(pg_settings, broker_url, queue, tmp_path, duplicate=False, rounds=20)
    assert figures["kills_while_serving"] >= 5


@pytest.mark.slow
def test_sigkilled_workers_with_every_message_delivered_twice(
    pg_settings: Settings, broker_url: str, queue: str, tmp_path: Path,
) -> None:
    figures = _kill_loop(pg_settings, broker_url, queue, tmp_path, duplicate=True, rounds=20)
    assert figures["kills_while_serving"] >= 5
    assert figures["messages_sent_by_test"] > 0
