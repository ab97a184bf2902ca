"""Rebuild beside and swap; rebuild beside and diff.

``rebuild``: create empty copies of a projection's tables (same columns, keys and indexes as
the live ones, whatever migrations did to them), replay the log from position 0 into them under
the tracking name ``<name>@rebuild``, then — holding the projection's lock, so the live worker
pauses — apply the last few events and, in **one transaction**, drop the live tables, rename the
copies into their place and move the tracking row over with a new generation. Readers see the
old tables or the new ones, never a half-built one.

``verify``: the same replay beside, up to the live position (under the lock for the last
stretch), then compare every table row by row (``EXCEPT`` both ways) and name the first
differing rows by primary key. The copies are dropped afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import random
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from engine.log import Logs
from projections.base import Projection
from projections.locks import ProjectionLock
from projections.runner import (
    Follower,
    Progress,
    ProjectionFailed,
    catch_up,
    log_sources,
    make_lookup,
)
from projections.store import ReadStore, Tx
from projections.tracking import ensure_tracking, new_generation, record_error
from spotex.config import Settings

LOCK_TIMEOUT = 300.0
# Events per transaction while replaying beside: a row changed many times in a page is written
# once, and the per-page costs (tracking rows, statements) are paid ten times less often.
REBUILD_BATCH = 10_000
SWAP_LOCK_TIMEOUT = "250ms"
INDEX_RE = re.compile(r'^CREATE (UNIQUE )?INDEX\s+(?:"[^"]+"|\S+)\s+ON\s+(?:"[^"]+"|[A-Za-z0-9_]+)\s*\(')


def table_names(tx: Tx) -> list[str]:
    if tx.dialect == "postgres":
        rows = tx.fetchall("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    else:
        rows = tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return [r[0] for r in rows]


def columns(tx: Tx, table: str) -> list[str]:
    if tx.dialect == "postgres":
        rows = tx.fetchall(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
        return [r[0] for r in rows]
    return [r[1] for r in tx.fetchall(f"PRAGMA table_info({table})")]


def _copy_sqlite(tx: Tx, table: str, shadow: str, suffix: str) -> None:
    rows = tx.fetchall(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY type DESC",  # 'table' before 'index'
        (table,),
    )
    for kind, name, sql in rows:
        if kind == "table":
            tx.execute(re.sub(r'^CREATE TABLE\s+(?:"[^"]+"|\S+)', f"CREATE TABLE {shadow}", sql, count=1))
        elif kind == "index":
            m = INDEX_RE.match(sql)
            if m is None:
                raise RuntimeError(f"cannot copy index {name}: {sql}")
            base = re.sub(r"__[a-z0-9]+$", "", name)
            tx.execute(f"CREATE {m.group(1) or ''}INDEX {base}__{suffix} ON {shadow} (" + sql[m.end():])


def create_shadows(tx: Tx, cls: type[Projection], letter: str) -> dict[str, str]:
    """Empty copies of the projection's tables; leftovers of an earlier attempt are dropped."""
    existing = table_names(tx)
    suffix = letter + secrets.token_hex(3)
    shadows = {}
    for table in cls.tables:
        for old in existing:
            if old.startswith(f"{table}__{letter}"):
                tx.execute(f"DROP TABLE {old}")
        shadow = f"{table}__{suffix}"
        if tx.dialect == "postgres":
            tx.execute(f"CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)")
        else:
            _copy_sqlite(tx, table, shadow, suffix)
        shadows[table] = shadow
    return shadows


def defer_indexes(tx: Tx, cls: type[Projection], shadows: dict[str, str]) -> list[Deferred]:
    """PostgreSQL: drop the copies' indexes that the replay does not use, to build them once
    after it (a sort per index instead of a B-tree insertion per row: the bulk load of a full
    rebuild costs the server about a third less). Kept: the primary keys of the tables the
    fold reads back or rewrites by key (``Keyed``: upserts, deletes, reads after the cache
    overflows). Dropped: every index and unique or primary key constraint of the tables it only
    appends to, and the secondary indexes of the others. Returns what ``restore_indexes``
    builds again, with the names and definitions the copies had."""
    if tx.dialect != "postgres":
        return []
    keyed = cls.keyed_tables()
    out = []
    for table, shadow in shadows.items():
        rows = tx.fetchall(
            "SELECT ci.relname, pg_get_indexdef(i.indexrelid), c.conname, "
            "pg_get_constraintdef(c.oid), i.indisprimary "
            "FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid "
            "LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
            "WHERE i.indrelid = ?::regclass ORDER BY ci.relname",
            (shadow,),
        )
        for index, indexdef, constraint, condef, primary in rows:
            if primary and table in keyed:
                continue
            if constraint is not None:
                tx.execute(f'ALTER TABLE {shadow} DROP CONSTRAINT "{constraint}"')
                create = f'ALTER TABLE {shadow} ADD CONSTRAINT "{constraint}" {condef}'
                out.append(Deferred(table, shadow, create, _columns_of(indexdef),
                                    bool(primary) or "UNIQUE" in condef))
            else:
                tx.execute(f'DROP INDEX "{index}"')
                out.append(Deferred(table, shadow, indexdef, _columns_of(indexdef),
                                    indexdef.startswith("CREATE UNIQUE")))
    return out


def _columns_of(indexdef: str) -> tuple[str, ...]:
    """The key columns of ``CREATE [UNIQUE] INDEX … USING btree (a, "b")`` (plain columns)."""
    start = indexdef.index("(", indexdef.index(" USING ")) + 1
    inside = indexdef[start : indexdef.index(")", start)]
    return tuple(c.strip().strip('"') for c in inside.split(","))


@dataclass(frozen=True)
class Deferred:
    """An index (or a unique/primary key constraint) of a copy, built after the replay."""

    table: str
    shadow: str
    create: str
    columns: tuple[str, ...]
    unique: bool


@dataclass
class Beside:
    """A projection being replayed into copies of its tables."""

    cls: type[Projection]
    purpose: str  # "rebuild" or "verify"
    shadows: dict[str, str]
    follower: Follower
    deferred: list[Deferred] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.cls.name

    def drop(self, store: ReadStore) -> None:
        with store.write() as tx:
            for shadow in self.shadows.values():
                tx.execute(f"DROP TABLE IF EXISTS {shadow}")
            tx.execute("DELETE FROM projection_tracking WHERE name = ?", (self.follower.name,))
            tx.execute("DELETE FROM projection_errors WHERE name = ?", (self.follower.name,))


class Busy(RuntimeError):
    """Another rebuild or verify of the same projection is running."""


@contextlib.contextmanager
def exclusive(store: ReadStore, classes: Sequence[type[Projection]], purpose: str) -> Iterator[None]:
    """One rebuild (or verify) at a time per projection: a second one would drop the first's
    copies. A duplicate rebuild message finds the lock taken and leaves."""
    locks = [ProjectionLock(store, f"{cls.name}@{purpose}") for cls in classes]
    try:
        for lock in locks:
            if not lock.acquire(0):
                raise Busy(f"a {purpose} of {lock.name.split('@')[0]} is already running")
        yield
    finally:
        for lock in locks:
            lock.close()


def start_beside(store: ReadStore, logs: Logs, classes: Sequence[type[Projection]], purpose: str
                 ) -> list[Beside]:
    lookup = make_lookup(logs)
    out = []
    for cls in classes:
        tracking_name = f"{cls.name}@{purpose}"
        with store.write() as tx:
            shadows = create_shadows(tx, cls, purpose[0])
            tx.execute("DELETE FROM projection_tracking WHERE name = ?", (tracking_name,))
            tx.execute("DELETE FROM projection_errors WHERE name = ?", (tracking_name,))
            ensure_tracking(tx, tracking_name, cls.source)
            deferred = defer_indexes(tx, cls, shadows)
        follower = Follower(store, cls, lookup, tracking_name, shadows, fresh=True)
        out.append(Beside(cls, purpose, shadows, follower, deferred))
    return out


def restore_indexes(store: ReadStore, b: Beside) -> None:
    """Build the indexes ``defer_indexes`` dropped (one transaction). A duplicate key — which
    live catch-up would have refused at its event — fails the replay at the event that wrote
    the second row, as if the index had been there all along (``ProjectionFailed``)."""
    if not b.deferred:
        return
    try:
        with store.write() as tx:
            for d in b.deferred:
                tx.execute(d.create)
    except Exception as exc:
        if type(exc).__name__ != "UniqueViolation":
            raise
        position = first_duplicate(store, b)
        if position is None:
            raise
        message = f"{type(exc).__name__}: {exc}"
        record_error(store, b.follower.name, position, message)
        b.follower.failed = ProjectionFailed(b.follower.name, position, message)
        raise b.follower.failed from exc
    b.deferred = []


def first_duplicate(store: ReadStore, b: Beside) -> int | None:
    """The first position at which a row repeated the unique key of an earlier one."""
    found: list[int] = []
    with store.read() as tx:
        for d in b.deferred:
            if not d.unique or "position" not in columns(tx, d.shadow):
                continue
            keys = ", ".join(f'"{c}"' for c in d.columns)
            row = tx.fetchone(
                f"SELECT min(p) FROM (SELECT position AS p, row_number() OVER "
                f"(PARTITION BY {keys} ORDER BY position) AS n FROM {d.shadow}) AS t WHERE n = 2"
            )
            if row is not None and row[0] is not None:
                found.append(int(row[0]))
    return min(found) if found else None


_gc_guard = threading.Lock()
_gc_state = {"paused": 0, "restore": False}


@contextlib.contextmanager
def no_automatic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while replaying beside (nested and concurrent uses
    count: it comes back on when the last replay of the process ends, if it was on before).

    A rebuild keeps its tables' rows in memory (hundreds of thousands of dicts) while it
    allocates millions of short-lived objects; each automatic full collection walks every live
    container, which cost a quarter of an orders rebuild's CPU. Rows and decoded outcomes are
    freed by reference counting; the few reference cycles made meanwhile wait for the
    collector to be on again."""
    with _gc_guard:
        if _gc_state["paused"] == 0:
            _gc_state["restore"] = gc.isenabled()
            gc.disable()
        _gc_state["paused"] += 1
    try:
        yield
    finally:
        with _gc_guard:
            _gc_state["paused"] -= 1
            if _gc_state["paused"] == 0 and _gc_state["restore"]:
                gc.enable()


def _replay(
    logs: Logs, besides: Sequence[Beside], until: dict[str, int] | None, progress: Progress | None
) -> None:
    """Replay each log once for all the copies that follow it."""
    with no_automatic_gc():
        _replay_logs(logs, besides, until, progress)


def _replay_logs(
    logs: Logs, besides: Sequence[Beside], until: dict[str, int] | None, progress: Progress | None
) -> None:
    for source in log_sources(logs).values():
        group = [b.follower for b in besides if b.cls.source == source.name]
        if not group:
            continue
        stop_at = until.get(source.name) if until else None
        catch_up(group, source, until=stop_at, progress=progress, batch=REBUILD_BATCH)


def split(classes: Sequence[type[Projection]], groups: int) -> list[list[type[Projection]]]:
    """Projections in ``groups`` groups of about equal cost (``Projection.rebuild_cost``):
    the heaviest first, each into the lightest group so far."""
    out: list[list[type[Projection]]] = [[] for _ in range(max(1, min(groups, len(classes))))]
    load = [0] * len(out)
    for cls in sorted(classes, key=lambda c: (-c.rebuild_cost, c.name)):
        i = load.index(min(load))
        out[i].append(cls)
        load[i] += cls.rebuild_cost
    return [g for g in out if g]


def _replay_group(
    settings: Settings, members: list[tuple[str, str, dict[str, str]]], until: dict[str, int] | None,
    label: str | None,
) -> dict[str, tuple[int, str] | None]:
    """In a child process: replay one group of copies (``(projection, tracking name, shadow
    tables)``) from their tracking rows, as ``_replay`` does in one process. Returns, per
    tracking name, the event it stopped at, if any (also recorded in ``projection_errors``)."""
    from projections.registry import PROJECTIONS
    from projections.store import open_read_store
    from spotex.wiring import build_logs

    logs = build_logs(settings, create_tables=False)
    store = open_read_store(settings)
    try:
        lookup = make_lookup(logs)
        followers = [
            Follower(store, PROJECTIONS[name], lookup, tracking, shadows, fresh=True)
            for name, tracking, shadows in members
        ]
        heads = {"exchange": logs.last_outcome_position(), "requests": logs.last_request_position()}
        started = time.monotonic()
        last = [started]

        def progress(source: str, position: int, applied: int) -> None:
            now = time.monotonic()
            if label is None or now - last[0] < 1.0:
                return
            last[0] = now
            head = heads.get(source) or 1
            print(f"{label}: {source} log at {position:,}/{head:,} ({100 * position / head:.0f}%), "
                  f"{position / max(now - started, 1e-6):,.0f} positions/s", file=sys.stderr, flush=True)

        with no_automatic_gc():
            for source in log_sources(logs).values():
                group = [f for f in followers if f.source == source.name]
                if group:
                    stop_at = until.get(source.name) if until else None
                    catch_up(group, source, until=stop_at, progress=progress, batch=REBUILD_BATCH)
        return {
            f.name: None if f.failed is None else (f.failed.position, f.failed.message)
            for f in followers
        }
    finally:
        store.close()


def _replay_parallel(
    settings: Settings, logs: Logs, besides: Sequence[Beside], until: dict[str, int] | None,
    processes: int, progress: Progress | None,
) -> None:
    """``_replay`` spread over processes, one group of projections each: the first group in
    this process (no interpreter to start and import for it), each other one in a child (each
    reads and decodes the logs for its own group). A projection that stopped at an event
    raises here, as the serial replay's follower would."""
    by_name = {b.name: b for b in besides}
    groups = split([b.cls for b in besides], processes)
    here = [by_name[c.name] for c in groups[0]]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, len(groups) - 1), mp_context=ctx) as pool:
        futures = []
        for group in groups[1:]:
            members = [(c.name, by_name[c.name].follower.name, by_name[c.name].shadows) for c in group]
            label = None
            if progress is not None:
                label = f"{besides[0].purpose} [{', '.join(c.name for c in group)}]"
            futures.append(pool.submit(_replay_group, settings, members, until, label))
        _replay(logs, here, until, progress)
        results: dict[str, tuple[int, str] | None] = {}
        for future in futures:
            results.update(future.result())
    for b in besides:
        if any(b is h for h in here):
            continue
        b.follower.reset()  # its position is where the child left the tracking row
        stopped = results.get(b.follower.name)
        if stopped is not None:
            b.follower.failed = ProjectionFailed(b.follower.name, stopped[0], stopped[1])


def live_position(store: ReadStore, name: str) -> int:
    with store.read() as tx:
        row = tx.fetchone("SELECT position FROM projection_tracking WHERE name = ?", (name,))
    if row is None:
        raise RuntimeError(f"no tracking row for projection {name}: run `spotex migrate`")
    return int(row[0])


def swap(store: ReadStore, b: Beside, attempts: int = 200) -> None:
    """Put the copies in the live tables' place, and their tracking row in the live row's.

    On PostgreSQL the live tables are locked first, all in one statement, waiting at most
    ``SWAP_LOCK_TIMEOUT`` — shorter than the server's ``deadlock_timeout`` (1 s) — and retried:
    a reader that holds one of the tables and asks for another then never deadlocks with the
    swap (the swap gives way), so readers never see an error, only a short wait.
    """
    for attempt in range(attempts):
        try:
            with store.write() as tx:
                if tx.dialect == "postgres":
                    tx.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                    tx.execute(f"LOCK TABLE {', '.join(b.shadows)} IN ACCESS EXCLUSIVE MODE")
                for table, shadow in b.shadows.items():
                    tx.execute(f"DROP TABLE {table}")
                    tx.execute(f"ALTER TABLE {shadow} RENAME TO {table}")
                tx.execute("DELETE FROM projection_tracking WHERE name = ?", (b.name,))
                tx.execute(
                    "UPDATE projection_tracking SET name = ?, generation = ? WHERE name = ?",
                    (b.name, new_generation(), b.follower.name),
                )
                tx.execute("DELETE FROM projection_errors WHERE name IN (?, ?)", (b.name, b.follower.name))
            return
        except Exception as exc:
            if type(exc).__name__ != "LockNotAvailable" or attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.01, 0.1))


def rebuild(
    store: ReadStore,
    logs: Logs,
    classes: Sequence[type[Projection]],
    progress: Progress | None = None,
    lock_timeout: float | None = LOCK_TIMEOUT,
    parallel: Parallel | None = None,
) -> dict[str, int]:
    """Rebuild each projection from position 0 beside its tables and swap it in.

    Returns the position each one was swapped in at. Raises ProjectionFailed (leaving the live
    tables untouched) if an event cannot be applied. ``parallel``: replay groups of projections
    in that many processes (PostgreSQL only; the locked tail and the swaps stay here).
    """
    with exclusive(store, classes, "rebuild"):
        return _rebuild(store, logs, classes, progress, lock_timeout, parallel)


def default_processes(cores: int) -> int:
    """How many processes a parallel rebuild uses by default: one per usable core, at most 4.

    Measured on 2 vCPUs shared with PostgreSQL and other sessions (docs/performance.md): 2
    processes cost ~20 % more CPU in all (each reads and decodes the exchange log for its own
    group); in 27 back-to-back pairs they were faster in 14 (up to +40 %, with the rest of the
    machine quiet) and slower in 13 (down to −15 %, with other work on a core): mean +7 %. On a
    machine busy with other work, ``SPOTEX_REBUILD_PROCESSES=1`` is the cheaper choice. Past 4
    the reading and decoding paid by each process and the database's share leave little to
    gain."""
    return max(1, min(4, cores))


@dataclass(frozen=True)
class Parallel:
    """Replay beside in ``processes`` processes, each opening ``settings``' stores."""

    settings: Settings
    processes: int

    def applies(self, store: ReadStore, besides: Sequence[Beside]) -> bool:
        # SQLite has one writer at a time: processes would only wait for each other
        return self.processes > 1 and len(besides) > 1 and store.dialect == "postgres"


def _replay_any(
    store: ReadStore, logs: Logs, besides: Sequence[Beside], until: dict[str, int] | None,
    progress: Progress | None, parallel: Parallel | None,
) -> None:
    if parallel is not None and parallel.applies(store, besides):
        _replay_parallel(parallel.settings, logs, besides, until, parallel.processes, progress)
    else:
        _replay(logs, besides, until, progress)


def _rebuild(
    store: ReadStore,
    logs: Logs,
    classes: Sequence[type[Projection]],
    progress: Progress | None,
    lock_timeout: float | None,
    parallel: Parallel | None = None,
) -> dict[str, int]:
    besides = start_beside(store, logs, classes, "rebuild")
    done: dict[str, int] = {}
    try:
        _replay_any(store, logs, besides, None, progress, parallel)
        sources = log_sources(logs)
        for b in besides:
            if b.follower.failed is not None:
                raise b.follower.failed
        for b in besides:
            restore_indexes(store, b)
        for b in besides:
            lock = ProjectionLock(store, b.name)
            try:
                with lock.hold(lock_timeout):
                    catch_up([b.follower], sources[b.cls.source])  # the events since
                    if b.follower.failed is not None:
                        raise b.follower.failed
                    swap(store, b)
                    done[b.name] = b.follower.current_position()
            finally:
                lock.close()
    finally:
        for b in besides:
            if b.name not in done:
                b.drop(store)
    return done


def diff_tables(tx: Tx, table: str, shadow: str, keys: Sequence[str], limit: int) -> list[str]:
    """The first rows (by primary key) that differ between a live table and its rebuilt copy."""
    cols = columns(tx, table)
    listed = ", ".join(cols)
    order = ", ".join(str(cols.index(k) + 1) for k in keys)
    key_at = [cols.index(k) for k in keys]

    def only(a: str, b: str) -> dict[tuple[object, ...], tuple[object, ...]]:
        rows = tx.fetchall(
            f"SELECT {listed} FROM {a} EXCEPT SELECT {listed} FROM {b} ORDER BY {order} LIMIT {limit}"
        )
        return {tuple(r[i] for i in key_at): tuple(r) for r in rows}

    live, rebuilt = only(table, shadow), only(shadow, table)
    out = []
    for key in sorted(set(live) | set(rebuilt), key=lambda k: tuple(str(v) for v in k))[:limit]:
        where = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
        a, b = live.get(key), rebuilt.get(key)
        if a is not None and b is not None:
            changed = "; ".join(
                f"{c}: live {x!r} ≠ rebuilt {y!r}"
                for c, x, y in zip(cols, a, b, strict=True)
                if x != y
            )
            out.append(f"{table}: row {where} differs: {changed}")
        elif a is not None:
            out.append(f"{table}: row {where} is in the live table but not in the rebuild: "
                       f"{dict(zip(cols, a, strict=True))}")
        else:
            assert b is not None
            out.append(f"{table}: row {where} is missing from the live table; the rebuild has "
                       f"{dict(zip(cols, b, strict=True))}")
    return out


def verify(
    store: ReadStore,
    logs: Logs,
    classes: Sequence[type[Projection]],
    progress: Progress | None = None,
    limit: int = 10,
    lock_timeout: float | None = LOCK_TIMEOUT,
    parallel: Parallel | None = None,
) -> dict[str, list[str]]:
    """Rebuild each projection beside its live tables, up to the live position, and diff.

    Returns the differences per projection (empty lists: identical).
    """
    with exclusive(store, classes, "verify"):
        return _verify(store, logs, classes, progress, limit, lock_timeout, parallel)


def _verify(
    store: ReadStore,
    logs: Logs,
    classes: Sequence[type[Projection]],
    progress: Progress | None,
    limit: int,
    lock_timeout: float | None,
    parallel: Parallel | None = None,
) -> dict[str, list[str]]:
    targets = {cls.name: live_position(store, cls.name) for cls in classes}
    besides = start_beside(store, logs, classes, "verify")
    found: dict[str, list[str]] = {}
    try:
        # Most of the way without pausing the live workers: each log read once for all copies,
        # up to the lowest target of its followers, then each copy alone up to its own.
        lowest: dict[str, int] = {}
        for b in besides:
            lowest[b.cls.source] = min(lowest.get(b.cls.source, targets[b.name]), targets[b.name])
        _replay_any(store, logs, besides, lowest, progress, parallel)
        for b in besides:
            if b.follower.failed is not None:
                raise b.follower.failed
            restore_indexes(store, b)
        for b in besides:
            source = log_sources(logs)[b.cls.source]
            catch_up([b.follower], source, until=targets[b.name], progress=progress)
        for b in besides:
            if b.follower.failed is not None:
                raise b.follower.failed
            lock = ProjectionLock(store, b.name)
            try:
                with lock.hold(lock_timeout):
                    position = live_position(store, b.name)
                    catch_up([b.follower], log_sources(logs)[b.cls.source], until=position)
                    if b.follower.failed is not None:
                        raise b.follower.failed
                    diffs: list[str] = []
                    with store.read() as tx:
                        for table, keys in b.cls.tables.items():
                            diffs += diff_tables(tx, table, b.shadows[table], keys, limit)
                    found[b.name] = diffs[:limit]
            finally:
                lock.close()
    finally:
        for b in besides:
            b.drop(store)
    return found
