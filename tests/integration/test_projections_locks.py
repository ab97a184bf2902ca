"""Projection locks taken and released together: one worker at a time per projection.

Given two workers (two read-store sessions) on SQLite files and on PostgreSQL, when the first
takes several projections' locks at once (``acquire_many``, one round trip on PostgreSQL), then
the second gets none of those and any other; when the first releases them together
(``release_many``), then the second can take them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from projections.locks import ProjectionLock, acquire_many, release_many
from projections.store import ReadStore, open_read_store
from spotex.config import Settings


@pytest.fixture
def two_stores(read_backend: Settings) -> Iterator[tuple[ReadStore, ReadStore]]:
    first, second = open_read_store(read_backend), open_read_store(read_backend)
    yield first, second
    first.close()
    second.close()


def test_locks_taken_together_exclude_another_worker_until_released_together(
    two_stores: tuple[ReadStore, ReadStore],
) -> None:
    first, second = two_stores
    names = ["balances", "orders", "fills"]
    mine = [ProjectionLock(first, n) for n in names]
    theirs = [ProjectionLock(second, n) for n in [*names, "trades"]]

    taken = acquire_many(mine)
    assert [lock.name for lock in taken] == names and all(lock.held for lock in mine)
    assert acquire_many(mine) == mine  # already held: nothing to do, still held

    got = acquire_many(theirs)
    assert [lock.name for lock in got] == ["trades"]  # the one nobody held
    release_many(got)

    release_many(mine)
    assert not any(lock.held for lock in mine)
    got = acquire_many(theirs)
    assert [lock.name for lock in got] == [*names, "trades"]
    assert acquire_many(mine) == []
    release_many(got)
    for lock in mine + theirs:
        lock.close()


CHILD = """
import sys
from projections.locks import ProjectionLock, acquire_many, release_many
from projections.store import PostgresStore
store = PostgresStore(sys.argv[1])
got = acquire_many([ProjectionLock(store, n) for n in sys.argv[2:]])
print(",".join(lock.name for lock in got))
release_many(got)
store.close()
"""


def test_on_postgresql_another_process_is_excluded_by_the_advisory_locks(
    make_postgres_database: object,
) -> None:
    import subprocess
    import sys

    from projections.store import PostgresStore

    with make_postgres_database() as url:  # type: ignore[operator]
        store = PostgresStore(url)
        mine = [ProjectionLock(store, n) for n in ("balances", "orders")]

        def child(*names: str) -> list[str]:
            out = subprocess.run([sys.executable, "-c", CHILD, url, *names], capture_output=True,
                                 text=True, check=True).stdout.strip()
            return out.split(",") if out else []

        assert len(acquire_many(mine)) == 2
        assert child("balances", "orders", "trades") == ["trades"]
        release_many(mine)
        assert child("balances", "orders", "trades") == ["balances", "orders", "trades"]
        store.close()
