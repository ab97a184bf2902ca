"""``spotex migrate``, ``spotex worker`` and ``spotex projections status|rebuild|verify``.

- ``migrate``: the event store's tables and the read tables (numbered files in
  ``migrations/``), idempotent; the only command that creates tables on PostgreSQL.
- ``worker``: the dramatiq worker (actors "catch up" and "rebuild") plus the scheduler that
  enqueues catch-ups when a log advances. ``SPOTEX_WORKER_THREADS`` (default 4) sets its
  threads; ``SPOTEX_WORKER_SCHEDULER=0`` runs it without the scheduler (run one scheduler per
  deployment if you like; several are harmless); ``SPOTEX_PROJECTION_QUEUE`` names its queue
  (default ``spotex_projections``; deployments sharing a broker need different names).
- ``projections status``: position, log head, lag and error of each projection (exit 1 if one
  is stopped at an error).
- ``projections rebuild NAME|all``: rebuild beside the live tables from position 0 and swap in.
- ``projections verify [NAME|all]``: rebuild beside and diff; exit 1 naming the first
  differing rows.

On PostgreSQL, rebuilding or verifying several projections replays them in
``SPOTEX_REBUILD_PROCESSES`` processes (default: one per usable core, at most 4 — see
``projections.rebuild.default_processes``; 1 = in this process), each a group of projections of
about equal cost.

Long runs print progress on stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from spotex.config import ConfigError, Settings
from spotex.wiring import build_logs


class _Progress:
    """Prints ``what: position/head, events/s`` on stderr at most once a second."""

    def __init__(self, verb: str, heads: dict[str, int]) -> None:
        self.verb = verb
        self.heads = heads
        self.start = time.monotonic()
        self.last = 0.0
        self.applied: dict[str, int] = {}

    def __call__(self, source: str, position: int, applied: int) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        head = self.heads.get(source) or 1
        rate = position / max(now - self.start, 1e-6)
        print(
            f"{self.verb}: {source} log at {position:,}/{head:,} ({100 * position / head:.0f}%), "
            f"{rate:,.0f} positions/s",
            file=sys.stderr,
            flush=True,
        )


def _open(settings: Settings) -> tuple[Any, Any]:
    from projections.store import open_read_store

    return open_read_store(settings), build_logs(settings, create_tables=settings.backend != "postgres")


def _require_migrated(store: Any) -> None:
    from projections.migrate import applied, migration_files

    missing = {v for v, _ in migration_files(store.dialect)} - set(applied(store))
    if missing:
        versions = ", ".join(sorted(missing))
        raise ConfigError(f"read tables are not migrated ({versions}): run `spotex migrate`")


def migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the event store tables and the read tables (idempotent)."""
    from projections.migrate import LOCK_KEY, migrate_read_store
    from projections.store import open_read_store

    settings = Settings.from_env()
    store = open_read_store(settings)
    try:
        if settings.backend == "postgres":
            # The library's create_table() races with itself across processes: serialise.
            with store.autocommit() as conn:
                conn.execute("SELECT pg_advisory_lock(?)", (LOCK_KEY,))
                try:
                    build_logs(settings, create_tables=True)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(?)", (LOCK_KEY,))
        else:
            build_logs(settings, create_tables=True)
        done = migrate_read_store(store)
    finally:
        store.close()
    print("event store tables: ready")
    print(f"read tables: applied {', '.join(done)}" if done else "read tables: up to date")
    return 0


def projections(args: argparse.Namespace) -> int:
    from projections.registry import resolve
    from projections.runner import ProjectionFailed

    settings = Settings.from_env()
    store, logs = _open(settings)
    try:
        _require_migrated(store)
        action = args.action
        if action == "status":
            return _status(store, logs)
        try:
            classes = resolve(getattr(args, "name", None) or "all")
        except ValueError as exc:
            print(f"spotex projections: {exc}", file=sys.stderr)
            return 2
        parallel = _parallel(settings)
        try:
            if action == "rebuild":
                return _rebuild(store, logs, classes, parallel)
            if action == "verify":
                return _verify(store, logs, classes, parallel)
        except ProjectionFailed as exc:
            print(f"spotex projections {action}: {exc}", file=sys.stderr)
            return 1
        raise AssertionError(action)
    except ConfigError as exc:
        print(f"spotex projections: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def _heads(logs: Any) -> dict[str, int]:
    return {"exchange": logs.last_outcome_position(), "requests": logs.last_request_position()}


def _status(store: Any, logs: Any) -> int:
    from projections.queries import status

    rows = status(store, logs)
    print(f"{'projection':<15} {'log':<9} {'position':>10} {'head':>10} {'lag':>8}  updated / error")
    failed = False
    for name, row in rows.items():
        note = row["updated_at"] or "never"
        if row["error"]:
            failed = True
            err = row["error"]
            note = f"STOPPED before position {err['position']} at {err['at']}: {err['message']}"
        print(
            f"{name:<15} {row['source']:<9} {row['position']:>10,} {row['head']:>10,} "
            f"{row['lag']:>8,}  {note}"
        )
    return 1 if failed else 0


def _parallel(settings: Settings) -> Any:
    from projections.rebuild import Parallel, default_processes

    processes = settings.tuning.rebuild_processes
    if processes is None:
        processes = default_processes(len(os.sched_getaffinity(0)))
    return Parallel(settings, processes)


def _rebuild(store: Any, logs: Any, classes: list[Any], parallel: Any = None) -> int:
    from projections.rebuild import Busy, rebuild

    started = time.monotonic()
    try:
        done = rebuild(store, logs, classes, progress=_Progress("rebuild", _heads(logs)),
                       parallel=parallel)
    except Busy as exc:
        print(f"spotex projections rebuild: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    for name, position in done.items():
        print(f"rebuilt {name} at position {position:,}")
    print(f"done in {elapsed:.1f} s", file=sys.stderr)
    return 0


def _verify(store: Any, logs: Any, classes: list[Any], parallel: Any = None) -> int:
    from projections.rebuild import Busy, verify

    try:
        found = verify(store, logs, classes, progress=_Progress("verify", _heads(logs)),
                       parallel=parallel)
    except Busy as exc:
        print(f"spotex projections verify: {exc}", file=sys.stderr)
        return 1
    bad = 0
    for name, diffs in found.items():
        if diffs:
            bad += 1
            print(f"{name}: DIFFERS from a rebuild")
            for line in diffs:
                print(f"  {line}")
        else:
            print(f"{name}: identical to a rebuild")
    return 1 if bad else 0


def worker(args: argparse.Namespace) -> int:
    """The projection worker process: dramatiq actors + the catch-up scheduler."""
    import dramatiq

    from projections.worker import WorkerContext, declare_actors, make_broker, run_scheduler

    settings = Settings.from_env()
    try:
        settings.check_production()
        if not settings.broker_url:
            raise ConfigError(
                "SPOTEX_BROKER_URL is not set: `spotex worker` needs a broker (amqp://… or redis://…); "
                "the embedded default (`spotex serve`) runs projections in-process"
            )
        broker = make_broker(settings.broker_url)
        store, logs = _open(settings)
        _require_migrated(store)
    except ConfigError as exc:
        print(f"spotex worker: {exc}", file=sys.stderr)
        return 2
    threads = settings.tuning.worker_threads
    scheduler = settings.tuning.worker_scheduler
    context = WorkerContext(store, logs)
    queue = settings.tuning.projection_queue
    actors = declare_actors(broker, lambda: context, queue)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    w = dramatiq.Worker(broker, worker_threads=threads)
    w.start()
    sched = None
    if scheduler:
        sched = threading.Thread(
            target=run_scheduler,
            args=(store, logs, lambda name: actors.catch_up.send(name), stop),
            name="spotex-projection-scheduler",
            daemon=True,
        )
        sched.start()
    print(f"spotex worker: {threads} threads, scheduler {'on' if scheduler else 'off'}", file=sys.stderr)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        w.stop()
        if sched is not None:
            sched.join(timeout=5)
        broker.close()
        context.close()
        store.close()
    return 0
