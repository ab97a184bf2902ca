"""Shared by the engine's integration tests: stores, a realistic request writer, the log checks.

The checks are the engine's contract with the store: every request has exactly one outcome, in
request order (by id and position, no gap, no duplicate); the hash chain is continuous from the
genesis; the tracking position is the last request's; the state recovered from the store keeps
every invariant and equals both a replay of the exchange log from position 0 and a fresh
re-execution of the requests log.
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
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from domain.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListMarket,
    PlaceOrder,
    RegisterUser,
    request_id_for,
)
from engine.exchange import Exchange
from engine.log import GENESIS_HASH, Logs, outcome_hash
from engine.sequencer import Sequencer
from spotex.config import Settings
from spotex.wiring import build_logs

ROOT = Path(__file__).resolve().parents[2]

StoreFactory = Callable[[], AbstractContextManager[Settings]]


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of fresh, empty stores of the parametrized backend (tables created)."""
    if request.param == "sqlite":
        counter = iter(range(1_000_000))

        @contextmanager
        def sqlite() -> Iterator[Settings]:
            yield Settings(data_dir=tmp_path / f"data{next(counter)}")

        return sqlite
    make_db = request.getfixturevalue("make_postgres_database")

    @contextmanager
    def postgres() -> Iterator[Settings]:
        with make_db() as url:
            yield Settings(database_url=url)

    return postgres


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    if settings.database_url:
        env["SPOTEX_DATABASE_URL"] = settings.database_url
    env["SPOTEX_DATA_DIR"] = str(settings.data_dir)
    return env


# --- writing requests --------------------------------------------------------------------------


class Writer:
    """Appends realistic requests: limits near a drifting mid, markets, cancels of own orders."""

    def __init__(self, logs: Logs, seed: int, users: int = 4) -> None:
        self.logs = logs
        self.rnd = random.Random(seed)
        self.n_users = users
        self.users: list[str] = []
        self.orders: list[tuple[str, str]] = []
        self.mid = 3_000_000
        self.appended = 0

    def append(self, command: Command, actor: str | None) -> str:
        rid = request_id_for(command, actor) or uuid.UUID(int=self.rnd.getrandbits(128), version=4)
        self.logs.append_request(rid, actor, command.to_log(), datetime.now(UTC))
        self.appended += 1
        return str(rid)

    def setup(self) -> None:
        admin = self.append(RegisterUser(username="admin", password_hash="x", roles=["admin"]), None)
        self.append(ListAsset(symbol="BTC", precision=8), admin)
        self.append(ListAsset(symbol="USDT", precision=6), admin)
        self.append(
            ListMarket(symbol="BTC-USDT", base="BTC", quote="USDT", tick_size="0.01", lot_size="0.0001",
                       maker_fee="0.001", taker_fee="0.002"),
            admin,
        )
        for i in range(self.n_users):
            name = f"trader{i}"
            self.users.append(self.append(RegisterUser(username=name, password_hash="x"), None))
            self.append(Deposit(username=name, asset="USDT", amount="10000000", reference="u"), admin)
            self.append(Deposit(username=name, asset="BTC", amount="500", reference="b"), admin)

    def one(self) -> None:
        rnd = self.rnd
        self.mid += rnd.choice((-1, 0, 1)) * rnd.randint(0, 3)
        side = rnd.choice(("buy", "sell"))
        r = rnd.random()
        if r < 0.2 and self.orders:
            order_id, owner = self.orders.pop(rnd.randrange(len(self.orders)))
            self.append(CancelOrder(order_id=uuid.UUID(order_id)), owner)
        elif r < 0.3:
            lots = rnd.randint(1, 30)
            self.append(PlaceOrder(market="BTC-USDT", side=side, type="market", quantity=f"{lots / 1e4:.4f}"),
                        rnd.choice(self.users))
        else:
            offset = rnd.randint(-5, 50)
            ticks = self.mid - offset if side == "buy" else self.mid + offset
            user = rnd.choice(self.users)
            oid = self.append(
                PlaceOrder(market="BTC-USDT", side=side, type="limit", price=f"{ticks / 100:.2f}",
                           quantity=f"{rnd.randint(1, 80) / 1e4:.4f}"),
                user,
            )
            self.orders.append((oid, user))

    def write(self, count: int) -> None:
        for _ in range(count):
            self.one()

    def bulk(self, count: int, chunk: int = 500) -> None:
        """Append ``count`` requests in transactions of ``chunk`` (fast, for big logs)."""
        from engine.log import Request

        real = self.logs.append_request
        batch: list[Any] = []

        def collect(rid: uuid.UUID, actor: str | None, command: dict[str, Any], when: datetime) -> Any:
            batch.append(self.logs.mapper.to_stored_event(
                Request(originator_id=rid, originator_version=1, timestamp=when, actor=actor,
                        command=command)))

        self.logs.append_request = collect  # type: ignore[assignment,method-assign]
        try:
            for _ in range(count):
                self.one()
                if len(batch) >= chunk:
                    self.logs.requests.insert_events(batch)
                    batch.clear()
            if batch:
                self.logs.requests.insert_events(batch)
        finally:
            self.logs.append_request = real  # type: ignore[method-assign]


class BackgroundWriter(threading.Thread):
    """Appends ``count`` requests one transaction each, as api replicas would, until done."""

    def __init__(self, writer: Writer, count: int, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.writer, self.count, self.pause = writer, count, pause
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.writer.one()
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


# --- the engine as a process -------------------------------------------------------------------


class EngineProcess:
    """``spotex engine`` as a subprocess, its log in a file."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.offset = log_path.stat().st_size if log_path.exists() else 0
        self.log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "spotex.cli", "engine"],  # -P: spotex as installed, not ./
            cwd=ROOT,
            env={**settings_env(settings), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.wait()

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def output(self) -> str:
        """What this run of the engine logged."""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it has recovered and installed its signal handlers."""
        wait_until(lambda: "engine recovered" in self.output() or self.proc.poll() is not None,
                   timeout, "the engine to recover")
        assert self.proc.poll() is None, f"the engine exited {self.proc.returncode}:\n{self.output()}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


# --- checks ------------------------------------------------------------------------------------


def check_exchange_log(logs: Logs) -> int:
    """Exactly one outcome per request, in order, chained; returns how many."""
    requests = [(r.request_id, r.position) for r in logs.iter_requests()]
    outcomes = list(logs.iter_outcomes())
    got = [(o.request_id, o.request_position) for o in outcomes]
    assert len(set(got)) == len(got), "an outcome is duplicated"
    assert got == requests, _first_difference(got, requests)
    prev = GENESIS_HASH
    for i, o in enumerate(outcomes, 1):
        assert o.seq == i, f"outcome at position {o.position} has seq {o.seq}, expected {i}"
        assert o.prev_hash == prev, f"chain broken at seq {o.seq}"
        assert o.hash == outcome_hash(
            prev, o.seq, o.request_id, o.request_position, o.time, o.actor, o.command, o.facts
        ), f"hash of seq {o.seq} does not match its content"
        prev = o.hash
    assert logs.engine_position() == (requests[-1][1] if requests else 0)
    return len(outcomes)


def _first_difference(got: list[Any], want: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"outcome {i + 1} is for request {a}, expected {b}"
    return f"{len(got)} outcomes for {len(want)} requests"


def check_state(logs: Logs) -> str:
    """Recovered state = replay of outcomes from 0 = re-execution of requests; invariants hold."""
    recovered = Sequencer(logs)
    assert recovered.exchange.check_invariants() == []
    replayed = Exchange()
    for o in logs.iter_outcomes():
        replayed.apply_all(o.facts)
    reexecuted = Exchange()
    for r in logs.iter_requests():
        reexecuted.execute(r)
    state_hash = recovered.exchange.state_hash()
    assert replayed.state_hash() == state_hash, "replaying the exchange log gives another state"
    assert reexecuted.state_hash() == state_hash, "re-executing the requests gives another state"
    return state_hash


def open_logs(settings: Settings) -> Logs:
    return build_logs(settings, create_tables=True)


def test_checks_catch_a_missing_and_a_duplicated_outcome(tmp_path: Path) -> None:
    """The checks above are what the crash tests rely on: make sure they fail when they should."""
    logs = open_logs(Settings(data_dir=tmp_path))
    w = Writer(logs, seed=1)
    w.setup()
    w.write(50)
    seq = Sequencer(logs, batch_size=10)
    while seq.step():
        pass
    assert check_exchange_log(logs) == w.appended
    check_state(logs)
    w.write(1)
    with pytest.raises(AssertionError):
        check_exchange_log(logs)  # the last request has no outcome yet
