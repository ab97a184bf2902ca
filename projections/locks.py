"""One worker at a time per projection.

- PostgreSQL: a session advisory lock keyed by the projection's name, taken on one connection
  per store (``PostgresStore.lock_session``) that all the locks of a process share, plus a
  thread lock (advisory locks are re-entrant within a session). If the worker dies, the server
  drops the session and the locks with it.
- SQLite on disk: an ``flock`` on ``<data dir>/locks/<name>.lock`` (across processes: the
  embedded server and a ``spotex projections rebuild`` run beside it).
- In memory: a ``threading.Lock`` per store and name.

The lock saves wasted work; correctness does not depend on it: every batch re-reads its tracking
row for update inside its transaction, so a second writer can never apply a batch twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator

from projections.store import PostgresStore, ReadStore

_LOCAL_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


def _local(scope: str, name: str) -> threading.Lock:
    with _LOCAL_GUARD:
        return _LOCAL_LOCKS.setdefault((scope, name), threading.Lock())


def advisory_key(name: str) -> int:
    digest = hashlib.sha256(f"spotex.projection:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LockTimeout(TimeoutError):
    pass


class ProjectionLock:
    def __init__(self, store: ReadStore, name: str) -> None:
        self.store = store
        self.name = name
        self.held = False
        self._fd: int | None = None
        self._mem: threading.Lock | None = None

    def _try(self) -> bool:
        if isinstance(self.store, PostgresStore):
            local = _local(self.store.url, self.name)
            if not local.acquire(blocking=False):
                return False
            try:
                taken = self.store.advisory(f"SELECT pg_try_advisory_lock({advisory_key(self.name)})")
            except BaseException:
                local.release()
                raise
            if not taken:
                local.release()
                return False
            self._mem = local
            return True
        path = self.store.lock_path(self.name)
        if path is None:
            self._mem = _local(f"memory:{id(self.store)}", self.name)
            return self._mem.acquire(blocking=False)
        import fcntl

        if self._fd is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def acquire(self, timeout: float | None = 0.0, poll: float = 0.05) -> bool:
        """Try to take the lock; wait up to ``timeout`` seconds (None: forever)."""
        if self.held:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try():
                self.held = True
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if isinstance(self.store, PostgresStore):
            with contextlib.suppress(Exception):
                self.store.advisory(f"SELECT pg_advisory_unlock({advisory_key(self.name)})")
        if self._mem is not None:
            self._mem.release()
            self._mem = None
            return
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        if not self.acquire(timeout):
            raise LockTimeout(f"projection {self.name} is locked by another worker")
        try:
            yield
        finally:
            self.release()


def acquire_many(locks: list[ProjectionLock]) -> list[ProjectionLock]:
    """Try each lock without waiting; the ones taken. On PostgreSQL in one round trip for all
    (the in-process runner takes every projection's lock on each pass: one query per lock per
    pass was most of a small pass's cost), elsewhere one by one."""
    if not locks or not isinstance(locks[0].store, PostgresStore):
        return [lock for lock in locks if lock.acquire(0)]
    store = locks[0].store
    assert all(lock.store is store for lock in locks)
    taken: list[ProjectionLock] = [lock for lock in locks if lock.held]
    trying: list[tuple[ProjectionLock, threading.Lock]] = []
    for lock in locks:
        if lock.held:
            continue
        local = _local(store.url, lock.name)
        if local.acquire(blocking=False):
            trying.append((lock, local))
    if not trying:
        return taken
    try:
        row = store.advisory_row("SELECT " + ", ".join(
            f"pg_try_advisory_lock({advisory_key(lock.name)})" for lock, _ in trying))
    except BaseException:
        for _, local in trying:
            local.release()
        raise
    for (lock, local), got in zip(trying, row, strict=True):
        if got:
            lock.held, lock._mem = True, local
            taken.append(lock)
        else:
            local.release()
    return taken


def release_many(locks: list[ProjectionLock]) -> None:
    """Release these locks; on PostgreSQL in one round trip for all."""
    held = [lock for lock in locks if lock.held]
    if not held or not isinstance(held[0].store, PostgresStore):
        for lock in held:
            lock.release()
        return
    store = held[0].store
    for lock in held:
        lock.held = False
    with contextlib.suppress(Exception):
        store.advisory_row("SELECT " + ", ".join(
            f"pg_advisory_unlock({advisory_key(lock.name)})" for lock in held))
    for lock in held:
        if lock._mem is not None:
            lock._mem.release()
            lock._mem = None
