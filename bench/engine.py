"""Engine end-to-end throughput on a real store, and the store's own limits in the same run.

    .venv/bin/python bench/engine.py [--url postgresql://postgres@127.0.0.1:5432] [-n 200000]
                                     [--batch 1000] [--users 20] [--profile] [--keep]

1. Creates a scratch database (``spotex_bench_<pid>``; dropped at the end unless ``--keep``), or
   uses ``--url sqlite`` for SQLite files in a temporary directory.
2. Fills the requests log with N realistic requests: ~70% limit orders near a drifting mid,
   ~20% cancels of live orders, ~10% market orders, from several funded users. A shadow engine
   decides them while they are generated, so cancels name orders that are really open. The fill
   is not timed (batched inserts of 1,000).
3. Times the sequencer consuming the whole log in batches: orders/s end to end (read, decode,
   decide, hash, encode, commit with tracking) and the per-batch commit time.
4. Measures the store's limits with the same stored outcome bytes: the library's
   one-event-per-transaction path, its batched path (``insert_events`` of 1,000 with tracking),
   and a raw ``COPY`` into a scratch table (PostgreSQL only), and prints ratios.

Figures go to stdout; ``docs/performance.md`` records them with the machine and the method.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._machine import print_machine
from domain.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListMarket,
    PlaceOrder,
    RegisterUser,
)
from engine.exchange import Exchange, RequestRecord
from engine.log import SNAPSHOT_STREAM_ID, Logs, Request
from engine.sequencer import Sequencer
from spotex.config import Settings, event_store_envs

MARKET = "BTC-USDT"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- the workload ------------------------------------------------------------------------------


class Workload:
    """Deterministic requests (seeded), decided by a shadow engine so cancels hit live orders."""

    def __init__(self, users: int, seed: int = 7) -> None:
        self.rnd = random.Random(seed)
        self.shadow = Exchange()
        self.n = 0
        self.mid = 3_000_000  # ticks of 0.01 USDT: 30,000.00
        self.live: list[tuple[str, str]] = []  # (order id, user id) resting in the book
        self.live_index: dict[str, int] = {}
        self.admin = ""
        self.users: list[str] = []
        self.n_users = users
        self.kinds = {"limit": 0, "cancel": 0, "market": 0}

    def _record(self, command: Command, actor: str | None, rid: str | None = None) -> RequestRecord:
        self.n += 1
        rid = rid or str(uuid.UUID(int=self.rnd.getrandbits(128), version=4))
        when = (T0 + timedelta(milliseconds=self.n)).isoformat()
        record = RequestRecord(rid, self.n, when, actor, command.to_log())
        for fact in self.shadow.execute(record):
            kind = fact["type"]
            if kind == "OrderBooked":
                self.live_index[fact["order_id"]] = len(self.live)
                self.live.append((fact["order_id"], record.actor or ""))
            elif kind == "OrderClosed" and fact["order_id"] in self.live_index:
                self._unlive(fact["order_id"])
        return record

    def _unlive(self, order_id: str) -> None:
        i = self.live_index.pop(order_id)
        last = self.live.pop()
        if last[0] != order_id:
            self.live[i] = last
            self.live_index[last[0]] = i

    def setup(self) -> Iterator[RequestRecord]:
        admin = self._record(RegisterUser(username="admin", password_hash="x", roles=["admin"]), None)
        self.admin = admin.request_id
        yield admin
        yield self._record(ListAsset(symbol="BTC", precision=8), self.admin)
        yield self._record(ListAsset(symbol="USDT", precision=6), self.admin)
        yield self._record(
            ListMarket(symbol=MARKET, base="BTC", quote="USDT", tick_size="0.01", lot_size="0.0001",
                       maker_fee="0.001", taker_fee="0.002"),
            self.admin,
        )
        for i in range(self.n_users):
            name = f"trader{i:03d}"
            user = self._record(RegisterUser(username=name, password_hash="x"), None)
            self.users.append(user.request_id)
            yield user
            yield self._record(Deposit(username=name, asset="USDT", amount="100000000", reference="u"),
                               self.admin)
            yield self._record(Deposit(username=name, asset="BTC", amount="5000", reference="b"),
                               self.admin)

    def orders(self, count: int) -> Iterator[RequestRecord]:
        rnd = self.rnd
        for _ in range(count):
            self.mid += rnd.choice((-1, 0, 1)) * rnd.randint(0, 3)
            r = rnd.random()
            side = "buy" if rnd.random() < 0.5 else "sell"
            if r < 0.20 and self.live:
                order_id, owner = self.live[rnd.randrange(len(self.live))]
                self.kinds["cancel"] += 1
                yield self._record(CancelOrder(order_id=uuid.UUID(order_id)), owner)
            elif r < 0.30:
                lots = rnd.randint(1, 40)
                self.kinds["market"] += 1
                yield self._record(
                    PlaceOrder(market=MARKET, side=side, type="market", quantity=f"{lots / 10_000:.4f}"),
                    rnd.choice(self.users),
                )
            else:
                # Mostly passive near the mid, some crossing it (they take, then rest).
                offset = rnd.randint(-5, 60)
                ticks = self.mid - offset if side == "buy" else self.mid + offset
                lots = rnd.randint(1, 100)
                self.kinds["limit"] += 1
                yield self._record(
                    PlaceOrder(market=MARKET, side=side, type="limit", price=f"{ticks / 100:.2f}",
                               quantity=f"{lots / 10_000:.4f}"),
                    rnd.choice(self.users),
                )


def fill_requests(logs: Logs, records: Iterator[RequestRecord], chunk: int = 1000) -> int:
    """Append requests in batches (not timed); returns how many."""
    total = 0
    batch: list[Any] = []
    for r in records:
        event = Request(originator_id=uuid.UUID(r.request_id), originator_version=1,
                        timestamp=datetime.fromisoformat(r.time), actor=r.actor, command=r.command)
        batch.append(logs.mapper.to_stored_event(event))
        if len(batch) == chunk:
            logs.requests.insert_events(batch)
            total += len(batch)
            batch = []
    if batch:
        logs.requests.insert_events(batch)
        total += len(batch)
    return total


# --- the stores --------------------------------------------------------------------------------


@contextmanager
def scratch_store(url: str, keep: bool) -> Iterator[Settings]:
    if url == "sqlite":
        with tempfile.TemporaryDirectory(prefix="spotex-bench-") as tmp:
            yield Settings(data_dir=Path(tmp))
        return
    import psycopg
    from psycopg import sql

    name = f"spotex_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield Settings(database_url=f"{url.rstrip('/')}/{name}")
    finally:
        if not keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        else:
            print(f"kept database {name}")


def server_info(settings: Settings) -> str:
    if settings.backend != "postgres":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    import psycopg

    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        version = conn.execute("show server_version").fetchone()[0]  # type: ignore[index]
        fsync = conn.execute("show fsync").fetchone()[0]  # type: ignore[index]
        sync = conn.execute("show synchronous_commit").fetchone()[0]  # type: ignore[index]
    return f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync})"


# --- the store's limits ------------------------------------------------------------------------


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else float("inf")


def store_limits(settings: Settings, logs: Logs, events: int) -> dict[str, float]:
    """events/s of the library's paths and of raw COPY, with the exchange log's own bytes."""
    from eventsourcing.persistence import InfrastructureFactory, StoredEvent, Tracking
    from eventsourcing.utils import Environment

    stored = [
        StoredEvent(n.originator_id, n.originator_version, n.topic, n.state)
        for n in logs.exchange.select_notifications(start=0, limit=events, inclusive_of_start=False)
    ]
    envs = event_store_envs(settings)
    factory = InfrastructureFactory.construct(Environment("benchstore", envs["exchange"]))
    recorder = factory.process_recorder()
    stream = uuid.uuid4()

    def renumbered(chunk: Sequence[StoredEvent], first: int) -> list[StoredEvent]:
        return [StoredEvent(stream, first + i, s.topic, s.state) for i, s in enumerate(chunk)]

    out: dict[str, float] = {}
    one = stored[: min(2000, len(stored))]
    t = time.perf_counter()
    for i, s in enumerate(one):
        recorder.insert_events(renumbered([s], i + 1), tracking=Tracking("bench", i + 1))
    out["one_per_tx"] = _rate(len(one), time.perf_counter() - t)

    version = len(one)
    t = time.perf_counter()
    for start in range(0, len(stored), 1000):
        chunk = stored[start : start + 1000]
        tracking = Tracking("bench", version + len(chunk))
        recorder.insert_events(renumbered(chunk, version + 1), tracking=tracking)
        version += len(chunk)
    out["batched_1000"] = _rate(len(stored), time.perf_counter() - t)

    if settings.backend == "postgres":  # the same, through the engine's recorder (binary rows)
        from engine.log import PROCESS_RECORDER_TOPIC

        env = {**envs["exchange"], "PROCESS_RECORDER_TOPIC": PROCESS_RECORDER_TOPIC}
        binary = InfrastructureFactory.construct(Environment("benchbin", env)).process_recorder()
        version = 0
        t = time.perf_counter()
        for start in range(0, len(stored), 1000):
            chunk = stored[start : start + 1000]
            tracking = Tracking("bench", version + len(chunk))
            binary.insert_events(renumbered(chunk, version + 1), tracking=tracking)
            version += len(chunk)
        out["binary_1000"] = _rate(len(stored), time.perf_counter() - t)

    if settings.backend == "postgres":
        import psycopg

        assert settings.database_url
        with psycopg.connect(settings.database_url) as conn:
            conn.execute(
                "create table bench_copy (originator_id uuid not null, originator_version bigint not null,"
                " topic text, state bytea, notification_id bigserial,"
                " primary key (originator_id, originator_version))"
            )
            conn.commit()
            t = time.perf_counter()
            for start in range(0, len(stored), 1000):
                chunk = stored[start : start + 1000]
                with conn.cursor() as cur, cur.copy(
                    "copy bench_copy (originator_id, originator_version, topic, state) from stdin"
                ) as copy:
                    for i, s in enumerate(chunk):
                        copy.write_row((stream, start + i + 1, s.topic, s.state))
                conn.commit()
            out["copy_1000"] = _rate(len(stored), time.perf_counter() - t)
    out["bytes_per_event"] = statistics.fmean(len(s.state) for s in stored)
    return out


# --- the run -----------------------------------------------------------------------------------


def consume(seq: Sequencer, logs: Logs) -> tuple[int, float, list[float]]:
    commits: list[float] = []
    real_commit: Callable[..., Any] = logs.commit

    def timed_commit(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_commit(*args, **kwargs)
        finally:
            commits.append(time.perf_counter() - t)

    logs.commit = timed_commit  # type: ignore[method-assign]
    n = 0
    cpu = time.process_time()
    t = time.perf_counter()
    while k := seq.step():
        n += k
    seq.drain()
    elapsed = time.perf_counter() - t
    consume.cpu = time.process_time() - cpu  # type: ignore[attr-defined]
    logs.commit = real_commit  # type: ignore[method-assign]
    return n, elapsed, commits


def restart(logs: Logs, seq: Sequencer, work: Workload, tail: int = 1000) -> None:
    """Restart time without a snapshot (replay everything) and with one (snapshot + tail)."""
    t = time.perf_counter()
    fresh = Sequencer(logs)
    full = time.perf_counter() - t
    same = fresh.exchange.state_hash() == seq.exchange.state_hash()
    print(f"restart: no snapshot: {fresh.seq:,} outcomes replayed in {full:.2f}s "
          f"({fresh.seq / full:,.0f}/s); same state hash: {same}")
    del fresh
    t = time.perf_counter()
    seq.snapshot()
    took = time.perf_counter() - t
    size = max(len(s.state) for s in logs.snapshots.select_events(SNAPSHOT_STREAM_ID))
    fill_requests(logs, work.orders(tail))
    while seq.step():
        pass
    seq.drain()
    t = time.perf_counter()
    fresh = Sequencer(logs)
    with_snap = time.perf_counter() - t
    same = fresh.exchange.state_hash() == seq.exchange.state_hash()
    print(f"restart: snapshot at seq {fresh.snapshot_seq:,} ({len(seq.exchange.orders):,} open orders, "
          f"{size / 1e6:.1f} MB stored, saved in {took:.2f}s) + {fresh.seq - fresh.snapshot_seq:,} outcomes "
          f"after it: {with_snap:.2f}s; same state hash: {same}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432",
                   help="PostgreSQL server (a scratch database is created), or 'sqlite'")
    p.add_argument("-n", type=int, default=200_000, help="order requests (default 200,000)")
    p.add_argument("--batch", type=int, default=1000, help="sequencer batch size")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--store-events", type=int, default=50_000, help="events for the store's limits")
    p.add_argument("--no-pipeline", action="store_true", help="commit each batch before the next")
    p.add_argument("--switch-interval", type=float, default=None,
                   help="sys.setswitchinterval for the run (spotex engine sets 0.001)")
    p.add_argument("--skip-store", action="store_true", help="skip the store's limits and restarts")
    p.add_argument("--profile", action="store_true", help="cProfile the consumption, print the top")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = p.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    with scratch_store(args.url, args.keep) as settings:
        logs = Logs.open(event_store_envs(settings))
        print_machine()
        print(f"store:   {server_info(settings)}")
        work = Workload(args.users)
        t = time.perf_counter()
        n_setup = fill_requests(logs, work.setup())
        n_orders = fill_requests(logs, work.orders(args.n))
        gen = time.perf_counter() - t
        shadow_hash = work.shadow.state_hash()
        print(f"filled:  {n_setup} setup + {n_orders} order requests in {gen:.1f}s "
              f"(mix {work.kinds}; {len(work.shadow.orders)} open at the end)")

        seq = Sequencer(logs, batch_size=args.batch, snapshot_every=10**12, pipeline=not args.no_pipeline)
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        n, elapsed, commits = consume(seq, logs)
        if prof:
            prof.disable()
        same = seq.exchange.state_hash() == shadow_hash
        cpu = consume.cpu  # type: ignore[attr-defined]
        print(f"engine:  {n} requests in {elapsed:.2f}s = {n / elapsed:,.0f} requests/s "
              f"(batch {args.batch}; {len(commits)} commits; state hash equals the shadow's: {same})")
        print(f"cpu:     {cpu:.2f}s of this process = {cpu / n * 1e6:.0f} us per request "
              f"(all threads; {n / cpu:,.0f} requests per CPU-second)")
        if commits:
            ms = sorted(c * 1000 for c in commits)
            print(f"commit:  per batch median {statistics.median(ms):.1f} ms, "
                  f"p90 {ms[int(len(ms) * .9)]:.1f} ms, max {ms[-1]:.1f} ms; "
                  f"{sum(ms) / 1000 / elapsed:.0%} of the wall time")
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
            print(s.getvalue())
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
            print(s.getvalue())

        if args.skip_store:
            return 0
        restart(logs, seq, work)

        limits = store_limits(settings, logs, min(args.store_events, n))
        rate = n / elapsed
        print(f"store:   {limits['bytes_per_event']:.0f} bytes per outcome on average")
        print(f"  library, one event per transaction: {limits['one_per_tx']:>10,.0f} events/s")
        print(f"  library, insert_events of 1,000:    {limits['batched_1000']:>10,.0f} events/s")
        if "binary_1000" in limits:
            print(f"  the same, rows sent in binary:      {limits['binary_1000']:>10,.0f} events/s"
                  "  (engine.log.BinaryPostgresProcessRecorder)")
        if "copy_1000" in limits:
            print(f"  raw COPY, 1,000 per transaction:    {limits['copy_1000']:>10,.0f} events/s")
        best = limits.get("binary_1000", limits["batched_1000"])
        print(f"ratios:  engine / one-per-tx {rate / limits['one_per_tx']:.1f}x, "
              f"engine / batched {rate / best:.2f}"
              + (f", batched (binary) / COPY {best / limits['copy_1000']:.2f}, "
                 f"library as shipped / COPY {limits['batched_1000'] / limits['copy_1000']:.2f}"
                 if "copy_1000" in limits else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
