"""Exactly once, failures, rebuild, verify, the in-process runner and the CLI — SQLite and PostgreSQL.

Given logs produced by the real engine, the read tables must come out the same whatever happens
on the way: batches of any size, restarts anywhere, pages fed twice, two workers racing, a batch
that dies half-written, an event that fails and is retried later. ``verify`` must find a row
changed by hand in any read model and name it; ``rebuild`` must give identical tables and swap
them in without readers ever seeing a half-built model.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from domain import commands as c
from engine.log import Logs
from projections import queries as q
from projections import rebuild as rebuild_module
from projections.base import Keyed, Projection
from projections.rebuild import Parallel, columns, rebuild, split, verify
from projections.registry import PROJECTIONS
from projections.runner import (
    Follower,
    ProjectionFailed,
    catch_up,
    followers_for,
    log_sources,
    make_lookup,
    run_in_process,
)
from projections.store import ReadStore
from projections.trades import Trades
from projections.users import Users
from spotex import cli
from spotex.config import Settings, Tuning
from tests.integration.conftest import ExchangeFlow

Dump = dict[str, list[tuple[Any, ...]]]

# A test marked so replaces a method of a projection class (to fail an event, tear a batch, shrink
# a cache). The compiled build (setup.py) compiles those classes with mypyc: a compiled caller (the
# other methods of ``Projection`` and ``Keyed``) calls a compiled method through its vtable and
# never sees the replacement, an interpreted one (the runner) does — so what the test exercises
# would depend on which callers are compiled. It runs on the interpreted build only; the compiled
# stage of scripts/test.sh (``SPOTEX_EXPECT_COMPILED=1``) skips it.
patches_a_projection_class = pytest.mark.skipif(
    os.environ.get("SPOTEX_EXPECT_COMPILED", "0") == "1",
    reason="monkeypatches a projection class: the interpreted build only (compiled callers do not see it)",
)


def dump(store: ReadStore) -> Dump:
    """Every read table's rows, sorted (the bookkeeping tables excluded)."""
    out: Dump = {}
    with store.read() as tx:
        for cls in PROJECTIONS.values():
            for table in cls.tables:
                cols = columns(tx, table)
                rows = tx.fetchall(f"SELECT {', '.join(cols)} FROM {table}")
                out[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


def positions(store: ReadStore) -> dict[str, int]:
    return {name: row["position"] for name, row in q.positions(store).items()}


def project(store: ReadStore, logs: Logs, batch: int = 1000, until: int | None = None) -> None:
    followers = followers_for(store, logs)
    for source in log_sources(logs).values():
        catch_up(list(followers.values()), source, batch=batch, until=until)
    assert not [f.failed for f in followers.values() if f.failed]


@pytest.fixture
def flowed(
    opened: tuple[Settings, Logs, ReadStore],
) -> Iterator[tuple[Settings, Logs, ReadStore, ExchangeFlow]]:
    settings, logs, store = opened
    flow = ExchangeFlow(logs, seed=5, step=timedelta(minutes=2))
    flow.bootstrap()
    flow.trade(350)
    flow.run()
    yield settings, logs, store, flow


@patches_a_projection_class
def test_restarts_duplicates_races_and_torn_batches_give_identical_tables(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _settings, logs, store, flow = flowed
    rng = random.Random(3)
    sources = log_sources(logs)
    head = logs.last_outcome_position()
    lookup = make_lookup(logs)
    # restarts: fresh followers (empty memory) at random cut points, odd batch sizes
    cut = 0
    while cut < head:
        cut = min(head, cut + rng.randint(1, 90))
        project(store, logs, batch=rng.choice((1, 7, 13, 64)), until=cut)
    # every page again (duplicate and late messages): nothing changes
    before = dump(store)
    for cls in PROJECTIONS.values():
        f = Follower(store, cls, lookup)
        for page_start in range(0, head, 50):
            page = sources[cls.source].read(page_start, 50, None)
            assert f.process(page, page_start) == 0
    assert dump(store) == before
    # more events; two workers race on every projection, batch by batch
    flow.trade(120)
    flow.run()
    a, b = followers_for(store, logs), followers_for(store, logs)
    for source in sources.values():
        while True:
            progressed = 0
            for followers in (a, b, b, a):
                progressed += catch_up(
                    [f for f in followers.values() if f.source == source.name], source, batch=11,
                    max_pages=1,
                )
            if not progressed:
                break
    # a batch that dies half-written (rows flushed, then a crash before the commit)
    flow.trade(60)
    flow.run()
    original = Projection.__dict__.get("state_json")
    calls = {"n": 0}

    def torn(self: Projection) -> str | None:
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise ConnectionError("the worker died mid-commit")
        return original(self)  # type: ignore[misc]

    monkeypatch.setattr(Projection, "state_json", torn)
    followers = followers_for(store, logs)
    for source in sources.values():
        for _ in range(200):
            catch_up([f for f in followers.values() if f.source == source.name], source, batch=17)
            for f in followers.values():
                f.failed = None
    monkeypatch.undo()
    project(store, logs)
    assert set(positions(store).values()) <= {logs.last_outcome_position(), logs.last_request_position()}
    live = dump(store)
    rebuild(store, logs, list(PROJECTIONS.values()))
    assert dump(store) == live
    assert all(not diffs for diffs in verify(store, logs, list(PROJECTIONS.values())).values())


@patches_a_projection_class
def test_a_failing_event_stops_the_projection_there_and_is_retried_not_skipped(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _settings, logs, store, _flow = flowed
    outcomes = list(logs.iter_outcomes())
    bad = next(o for o in outcomes if any(f["type"] == "UserRegistered" and f["username"] == "carol"
                                          for f in o.facts))
    real_apply = Users.apply

    def boom(self: Users, o: Any) -> None:
        if o.position == bad.position:
            raise RuntimeError("boom: cannot apply this one")
        real_apply(self, o)

    monkeypatch.setattr(Users, "apply", boom)
    followers = followers_for(store, logs)
    source = log_sources(logs)["exchange"]
    catch_up(list(followers.values()), source, batch=500)
    users = followers["users"]
    assert isinstance(users.failed, ProjectionFailed)
    assert users.failed.position == bad.position
    before_bad = max(o.position for o in outcomes if o.position < bad.position)
    status = q.status(store, logs)
    assert status["users"]["position"] == before_bad  # the events before it were committed
    assert status["users"]["error"]["position"] == bad.position
    assert "boom: cannot apply this one" in status["users"]["error"]["message"]
    assert q.get_user_by_name(store, "bob") is not None  # applied before the failing event
    assert q.get_user_by_name(store, "carol") is None  # not skipped: not applied at all
    assert q.get_user_by_name(store, "dave") is None  # and nothing after it
    assert status["orders"]["lag"] == 0 and status["orders"]["error"] is None  # the others went on
    assert not q.caught_up(store, logs.last_outcome_position())
    # retried: it fails again at the same event, never past it
    catch_up([followers["users"]], source)
    assert q.status(store, logs)["users"]["position"] == before_bad
    # fixed: the next catch-up applies it and clears the error
    monkeypatch.undo()
    catch_up([followers["users"]], source)
    status = q.status(store, logs)
    assert status["users"]["error"] is None and status["users"]["lag"] == 0
    assert q.get_user_by_name(store, "carol") is not None
    assert verify(store, logs, [Users]) == {"users": []}


def _tamper(store: ReadStore, table: str, keys: tuple[str, ...]) -> tuple[str, str]:
    """A non-key column and the SQL expression that changes it (text if there is one)."""
    with store.read() as tx:
        if tx.dialect == "postgres":
            rows = tx.fetchall(
                "SELECT column_name, data_type FROM information_schema.columns WHERE "
                "table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position", (table,))
            typed = [(r[0], r[1] == "text") for r in rows]
        else:
            typed = [(r[1], r[2] == "TEXT") for r in tx.fetchall(f"PRAGMA table_info({table})")]
    candidates = [(n, is_text) for n, is_text in typed if n not in keys]
    for name, is_text in candidates:
        if is_text:
            return name, "'tampered'"
    name = candidates[0][0]
    return name, f"{name} + 1000"


def test_verify_names_a_row_changed_by_hand_in_any_read_model(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow],
) -> None:
    _settings, logs, store, _flow = flowed
    project(store, logs)
    assert all(not d for d in verify(store, logs, list(PROJECTIONS.values())).values())
    for cls in PROJECTIONS.values():
        for table, keys in cls.tables.items():
            column, change = _tamper(store, table, keys)
            with store.write() as tx:
                listed = ", ".join(keys)
                first = tx.fetchone(f"SELECT {listed} FROM {table} ORDER BY {listed} LIMIT 1")
                assert first is not None, f"{table} has no rows to tamper with"
                where = " AND ".join(f"{k} = ?" for k in keys)
                tx.execute(f"UPDATE {table} SET {column} = {change} WHERE {where}", tuple(first))
            found = verify(store, logs, [cls])[cls.name]
            named = ", ".join(f"{k}={v}" for k, v in zip(keys, first, strict=True))
            assert found and found[0].startswith(f"{table}: row {named} differs: {column}: live "), found
            with store.write() as tx:  # and a row deleted by hand
                tx.execute(f"DELETE FROM {table} WHERE {where}", tuple(first))
            found = verify(store, logs, [cls])[cls.name]
            missing = f"{table}: row {named} is missing from the live table"
            assert found and found[0].startswith(missing), found
            rebuild(store, logs, [cls])
            assert verify(store, logs, [cls]) == {cls.name: []}


def test_rebuild_gives_identical_tables_and_swaps_atomically_under_load(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow],
) -> None:
    settings, logs, store, flow = flowed
    project(store, logs)
    before, tracked = dump(store), positions(store)
    done = rebuild(store, logs, list(PROJECTIONS.values()))
    assert done == {name: tracked[name] for name in PROJECTIONS}
    assert dump(store) == before
    assert positions(store) == tracked

    # while the engine and the in-process runner keep going and readers keep reading
    stop, wake = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    runner = threading.Thread(target=run_in_process, args=(settings, logs, stop, wake),
                              kwargs={"store": store, "batch": 50})
    runner.start()
    seen = {"trades": 0, "reads": 0}

    def read() -> None:
        while not stop.is_set():
            try:
                n = len(q.trades(store, "BTC-USDT", limit=1000)["data"])
                assert n >= seen["trades"], "a reader saw the trades table shrink"
                seen["trades"] = n
                assert q.get_user_by_name(store, "alice") is not None
                assert q.book(store, "BTC-USDT") is not None
                seen["reads"] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            flow.trade(40)
            flow.run()
            wake.set()
            rebuild(store, logs, list(PROJECTIONS.values()))
        flow.run()
        deadline = time.monotonic() + 60
        while not q.caught_up(store, logs.last_outcome_position()):
            assert time.monotonic() < deadline
            wake.set()
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(30)
        reader.join(30)
    assert not errors, errors
    assert seen["reads"] > 0
    assert all(not d for d in verify(store, logs, list(PROJECTIONS.values())).values())


@patches_a_projection_class
def test_rebuild_in_memory_then_reading_back_gives_identical_tables(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild folds into memory (its copies start empty) and writes each page once; when a
    table outgrows the cache it goes back to reading rows. Small pages and a tiny cache make it
    switch early and write, rewrite and delete rows across many pages: same tables."""
    _settings, logs, store, _flow = flowed
    project(store, logs)
    before, tracked = dump(store), positions(store)
    switched: set[str] = set()
    real_flush = Keyed.flush

    def small(self: Keyed, tx: Any) -> None:
        self.max_cached = 3
        was_fresh = self._fresh_complete
        real_flush(self, tx)
        if was_fresh and not self._fresh_complete:
            switched.add(self.table.split("__")[0])

    monkeypatch.setattr(rebuild_module, "REBUILD_BATCH", 37)
    monkeypatch.setattr(Keyed, "flush", small)
    rebuild(store, logs, list(PROJECTIONS.values()))
    assert {"orders", "balances", "book_orders", "candles"} <= switched
    assert dump(store) == before
    assert positions(store) == tracked


def test_parallel_rebuild_and_verify_give_identical_tables(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow],
) -> None:
    """``rebuild all`` in several processes (PostgreSQL; one process on SQLite): the same tables
    as live catch-up, and a parallel verify still names a row changed by hand."""
    settings, logs, store, _flow = flowed
    project(store, logs)
    before, tracked = dump(store), positions(store)
    parallel = Parallel(settings, 3)
    groups = split(list(PROJECTIONS.values()), 3)
    assert len(groups) == 3 and sorted(c.name for g in groups for c in g) == sorted(PROJECTIONS)
    done = rebuild(store, logs, list(PROJECTIONS.values()), parallel=parallel)
    assert done == {name: tracked[name] for name in PROJECTIONS}
    assert dump(store) == before
    assert positions(store) == tracked
    assert verify(store, logs, list(PROJECTIONS.values()), parallel=parallel) == {
        name: [] for name in PROJECTIONS}
    with store.write() as tx:
        tx.execute("UPDATE ledger SET kind = 'tampered' WHERE position = "
                   "(SELECT min(position) FROM ledger)")
    found = verify(store, logs, list(PROJECTIONS.values()), parallel=parallel)
    assert found["ledger"] and found["ledger"][0].startswith("ledger: row position="), found
    assert all(not d for name, d in found.items() if name != "ledger")


@patches_a_projection_class
def test_a_failing_event_stops_a_parallel_rebuild_and_leaves_the_live_tables(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The groups' replays report the event a projection stopped at; the rebuild raises there
    and swaps nothing in. (Threads stand in for the processes so that the failure can be
    injected; on SQLite the replay runs in this process.)"""
    settings, logs, store, _flow = flowed
    project(store, logs)
    before, tracked = dump(store), positions(store)
    bad = next(o for o in logs.iter_outcomes() if any(
        f["type"] == "UserRegistered" and f["username"] == "carol" for f in o.facts))
    real_apply = Users.apply

    def boom(self: Users, o: Any) -> None:
        if o.position == bad.position:
            raise RuntimeError("boom: cannot apply this one")
        real_apply(self, o)

    class Threads(ThreadPoolExecutor):
        def __init__(self, workers: int, mp_context: Any = None) -> None:
            super().__init__(workers)

    monkeypatch.setattr(Users, "apply", boom)
    monkeypatch.setattr(rebuild_module, "ProcessPoolExecutor", Threads)
    with pytest.raises(ProjectionFailed) as failed:
        rebuild(store, logs, list(PROJECTIONS.values()), parallel=Parallel(settings, 2))
    assert failed.value.position == bad.position
    assert "boom: cannot apply this one" in failed.value.message
    assert dump(store) == before
    assert positions(store) == tracked
    with store.read() as tx:  # the copies and their tracking rows are gone
        assert not [t for t in rebuild_module.table_names(tx) if "__r" in t]
        assert tx.fetchone("SELECT count(*) FROM projection_tracking WHERE name LIKE ?", ("%@%",))[0] == 0


def index_definitions(store: ReadStore) -> list[str]:
    """Every read table's indexes and key constraints (SQLite: its explicit indexes)."""
    tables = [t for cls in PROJECTIONS.values() for t in cls.tables]
    with store.read() as tx:
        if tx.dialect == "postgres":
            rows = tx.fetchall(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid), "
                "coalesce((SELECT contype FROM pg_constraint WHERE conindid = i.indexrelid), '-') "
                "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "WHERE c.relname = ANY(?)", (tables,))
        else:
            rows = [(t, sql or name, "") for t in tables for name, sql in tx.fetchall(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (t,))]
    # names aside: a copy's indexes are named after it (LIKE … INCLUDING ALL), not the migration
    return sorted(re.sub(r"INDEX \S+ ON (public\.)?\S+", "INDEX ON", f"{t}: {d} {k}").replace('"', "")
                  for t, d, k in rows if not d.startswith("sqlite_autoindex"))


def test_a_rebuild_gives_the_tables_back_their_indexes_and_keys(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow],
) -> None:
    """On PostgreSQL the copies are loaded without the indexes the replay does not use and get
    them afterwards: the swapped-in tables have every index, unique and primary key again."""
    _settings, logs, store, _flow = flowed
    project(store, logs)
    before = index_definitions(store)
    assert any(d.startswith("ledger: ") for d in before)
    rebuild(store, logs, list(PROJECTIONS.values()))
    assert index_definitions(store) == before


@patches_a_projection_class
def test_a_duplicate_key_stops_a_rebuild_at_the_event_that_wrote_it(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A row that repeats a unique key is refused as live catch-up refuses it, at its event —
    also when the copy's keys are only built after the replay (PostgreSQL) — and nothing is
    swapped in."""
    _settings, logs, store, _flow = flowed
    project(store, logs)
    before, tracked = dump(store), positions(store)
    trading = [o for o in logs.iter_outcomes() if any(f["type"] == "TradeExecuted" for f in o.facts)]
    bad = trading[len(trading) // 2]
    real_apply = Trades.apply

    def twice(self: Trades, o: Any) -> None:
        real_apply(self, o)
        if o.position == bad.position:
            real_apply(self, o)

    monkeypatch.setattr(Trades, "apply", twice)
    with pytest.raises(ProjectionFailed) as failed:
        rebuild(store, logs, list(PROJECTIONS.values()))
    assert failed.value.position == bad.position
    assert "trade" in failed.value.message.lower()
    assert dump(store) == before
    assert positions(store) == tracked
    with store.read() as tx:
        assert not [t for t in rebuild_module.table_names(tx) if "__r" in t]


def test_the_collector_pause_of_replays_nests_and_restores() -> None:
    """Replays pause the cyclic garbage collector; overlapping replays (threads of one worker)
    keep it paused until the last one ends, and it comes back only if it was on."""
    import gc

    assert gc.isenabled()
    with rebuild_module.no_automatic_gc():
        assert not gc.isenabled()
        with rebuild_module.no_automatic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with rebuild_module.no_automatic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), rebuild_module.no_automatic_gc():
        raise RuntimeError("a failed replay")
    assert gc.isenabled()


def test_run_in_process_follows_both_logs_until_stopped(
    opened: tuple[Settings, Logs, ReadStore],
) -> None:
    settings, logs, store = opened
    flow = ExchangeFlow(logs, seed=9)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=run_in_process, args=(settings, logs, stop, wake), daemon=True)
    thread.start()
    try:
        flow.bootstrap()
        oid = flow.place("alice", "BTC-USDT", "buy", "99.5", "0.010")
        flow.run()
        wake.set()
        found = q.wait_for_outcome(store, oid, timeout=30)
        assert found is not None and found["status"] == "accepted"
        order = q.order(store, oid)
        assert order is not None and order["status"] == "open"
        deadline = time.monotonic() + 30
        while q.event_position(store, oid) is None:  # the requests log's index too
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    if settings.database_url:
        monkeypatch.setenv("SPOTEX_DATABASE_URL", settings.database_url)
    else:
        monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
        monkeypatch.setenv("SPOTEX_DATA_DIR", str(settings.data_dir))


def test_cli_migrate_status_rebuild_verify(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, logs, store, _flow = flowed
    _env(monkeypatch, settings)
    assert cli.main(["migrate"]) == 0
    assert "read tables: up to date" in capsys.readouterr().out
    assert cli.main(["projections", "status"]) == 0
    out = capsys.readouterr().out
    head = logs.last_outcome_position()
    assert f"orders          exchange           0 {head:>10,} {head:>8,}" in out
    assert cli.main(["projections", "rebuild", "all"]) == 0
    captured = capsys.readouterr()
    assert f"rebuilt orders at position {head:,}" in captured.out
    assert cli.main(["projections", "status"]) == 0
    assert f"orders          exchange     {head:>7,} {head:>10,}        0" in capsys.readouterr().out
    assert cli.main(["projections", "verify"]) == 0
    assert "orders: identical to a rebuild" in capsys.readouterr().out
    with store.write() as tx:
        tx.execute("UPDATE trades SET taker_side = 'sideways' WHERE trade_id = 3")
    assert cli.main(["projections", "verify", "trades"]) == 1
    out = capsys.readouterr().out
    assert "trades: DIFFERS from a rebuild" in out
    assert "trades: row trade_id=3 differs: taker_side: live 'sideways'" in out
    assert cli.main(["projections", "rebuild", "nonsense"]) == 2
    assert "unknown projection 'nonsense'" in capsys.readouterr().err
    assert cli.main(["projections", "rebuild", "trades"]) == 0
    assert cli.main(["projections", "verify", "trades"]) == 0
    capsys.readouterr()
    # replayed in two processes (PostgreSQL; SQLite replays in this one): the same
    monkeypatch.setenv("SPOTEX_REBUILD_PROCESSES", "2")
    assert cli.main(["projections", "rebuild", "all"]) == 0
    assert f"rebuilt orders at position {head:,}" in capsys.readouterr().out
    assert cli.main(["projections", "verify"]) == 0
    assert "trades: identical to a rebuild" in capsys.readouterr().out
    monkeypatch.setenv("SPOTEX_REBUILD_PROCESSES", "two")
    assert cli.main(["projections", "rebuild", "all"]) == 2
    assert "SPOTEX_REBUILD_PROCESSES must be a whole number" in capsys.readouterr().err


def test_a_parallel_rebuild_takes_one_process_per_core_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without ``SPOTEX_REBUILD_PROCESSES``: one process per usable core, at most 4 (two cores
    measured: docs/performance.md); the variable overrides it."""
    from spotex.projections_cli import _parallel

    monkeypatch.delenv("SPOTEX_REBUILD_PROCESSES", raising=False)
    settings = Settings(database_url="postgresql://nowhere/none")
    for cores, processes in ((1, 1), (2, 2), (3, 3), (4, 4), (16, 4)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert _parallel(settings).processes == processes
    assert _parallel(Settings(database_url="postgresql://nowhere/none",
                              tuning=Tuning.from_env({"SPOTEX_REBUILD_PROCESSES": "1"}))).processes == 1


@patches_a_projection_class
def test_status_shows_a_stopped_projection_and_exits_1(
    flowed: tuple[Settings, Logs, ReadStore, ExchangeFlow], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings, logs, store, _flow = flowed
    monkeypatch.setattr(Users, "apply", lambda self, o: (_ for _ in ()).throw(ValueError("bad fact")))
    project_users = Follower(store, Users, None)
    catch_up([project_users], log_sources(logs)["exchange"])
    assert project_users.failed is not None
    _env(monkeypatch, settings)
    assert cli.main(["projections", "status"]) == 1
    out = capsys.readouterr().out
    assert "users           exchange           0" in out
    assert "STOPPED before position 1" in out and "ValueError: bad fact" in out


def test_migrate_is_idempotent_and_tables_are_never_made_at_start_up(
    opened: tuple[Settings, Logs, ReadStore],
) -> None:
    from projections.migrate import applied, migrate_read_store

    settings, _logs, store = opened
    assert migrate_read_store(store) == []
    assert "0001_read_models" in applied(store)
    # a read store that was never migrated: the runner refuses to guess
    empty = Settings(data_dir=settings.data_dir / "empty") if settings.backend == "sqlite" else None
    if empty is not None:
        from projections.store import open_read_store

        other = open_read_store(empty)
        try:
            with pytest.raises(Exception, match=r"projection_tracking|no such table"):
                Follower(other, Users, None).current_position()
        finally:
            other.close()


def test_commands_after_a_wait_read_their_writes(opened: tuple[Settings, Logs, ReadStore]) -> None:
    """The api's wait=true path: outcome decided, then every read model caught up to it."""
    _settings, logs, store = opened
    flow = ExchangeFlow(logs, seed=2)
    flow.bootstrap()
    flow.run()
    project(store, logs)
    oid = flow.send("bob", c.PlaceOrder(market="BTC-USDT", side="sell", type="limit", price="120.0",
                                        quantity="0.5"))
    assert q.outcome_of(store, oid) is None
    flow.run()
    assert q.wait_for_outcome(store, oid, timeout=0.05) is None  # decided, not yet projected
    project(store, logs)
    found = q.wait_for_outcome(store, oid, timeout=1)
    assert found is not None
    order = q.order(store, oid)
    assert order is not None and order["position"] == found["position"] and order["status"] == "open"
    book = q.book(store, "BTC-USDT")
    assert book is not None and book["asks"] == [["120.0", "0.500"]]
