"""``Logs.append_requests``: several requests in one transaction, each answered as if alone.

Given a requests log (in memory, SQLite, PostgreSQL), when a batch is appended, then each item
gets what ``append_request`` would give it: new ids get consecutive positions; a retry of an id
earlier in the batch or already in the log is idempotent (same position, ``created`` False); the
same id with another body is a ``RequestConflict`` naming the original position — and nothing
else of the batch is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.log import Appended, Logs, RequestConflict
from spotex.config import Settings, event_store_envs
from spotex.wiring import build_logs

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def deposit(amount: str, reference: str = "r") -> dict[str, object]:
    return {"command": "Deposit", "username": "alice", "asset": "USDT", "amount": amount,
            "reference": reference}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Logs]:
    if request.param == "memory":
        yield Logs.open(event_store_envs(Settings(database_url="memory://")))
        return
    if request.param == "sqlite":
        yield build_logs(Settings(data_dir=tmp_path / "data"), create_tables=True)
        return
    make: Callable[[], AbstractContextManager[str]] = request.getfixturevalue("make_postgres_database")
    with make() as url:
        yield build_logs(Settings(database_url=url), create_tables=True)


def test_new_requests_get_consecutive_positions_in_arrival_order(logs: Logs) -> None:
    ids = [uuid.uuid4() for _ in range(5)]
    results = logs.append_requests([(i, "admin", deposit(str(n + 1)), T0) for n, i in enumerate(ids)])
    assert results == [Appended(i, n + 1, True) for n, i in enumerate(ids)]
    stored = logs.read_requests(0, 10)
    assert [r.request_id for r in stored] == [str(i) for i in ids]
    assert [r.command["amount"] for r in stored] == ["1", "2", "3", "4", "5"]


def test_a_retry_inside_the_batch_is_idempotent_and_another_body_conflicts(logs: Logs) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    results = logs.append_requests([
        (a, "admin", deposit("1"), T0),
        (b, "admin", deposit("2"), T0),
        (a, "admin", deposit("1"), T0),      # same body: the same request
        (a, "admin", deposit("9"), T0),      # another body under the same id
        (a, "alice", deposit("1"), T0),      # another actor under the same id
    ])
    assert results[:3] == [Appended(a, 1, True), Appended(b, 2, True), Appended(a, 1, False)]
    for conflict in results[3:]:
        assert isinstance(conflict, RequestConflict)
        assert (conflict.request_id, conflict.position) == (a, 1)
        assert conflict.existing == deposit("1")
    assert len(logs.read_requests(0, 10)) == 2


def test_ids_already_in_the_log_fall_back_to_one_at_a_time_and_lose_nothing(logs: Logs) -> None:
    old = uuid.uuid4()
    assert logs.append_request(old, "admin", deposit("7"), T0) == Appended(old, 1, True)
    new1, new2 = uuid.uuid4(), uuid.uuid4()
    results = logs.append_requests([
        (new1, "admin", deposit("1"), T0),
        (old, "admin", deposit("7"), T0),    # a retry of an earlier request
        (old, "admin", deposit("8"), T0),    # a reused key with another body
        (new2, "admin", deposit("2"), T0),
    ])
    stored = logs.read_requests(0, 10)
    assert [(r.request_id, r.command["amount"]) for r in stored] == [
        (str(old), "7"), (str(new1), "1"), (str(new2), "2")]
    # (PostgreSQL may skip positions a rolled-back insert had taken; the order is what counts.)
    assert results[0] == Appended(new1, stored[1].position, True)
    assert results[1] == Appended(old, 1, False)
    assert isinstance(results[2], RequestConflict) and results[2].position == 1
    assert results[3] == Appended(new2, stored[2].position, True)


def test_an_empty_batch_appends_nothing(logs: Logs) -> None:
    assert logs.append_requests([]) == []
    assert logs.read_requests(0, 10) == []


def test_the_engine_process_is_woken_by_the_notify_of_each_append(
    make_postgres_database: Callable[[], AbstractContextManager[str]],
) -> None:
    """Given ``spotex engine``'s listener on a PostgreSQL requests log, when an api process
    appends (one request, or a group), then the engine's wake event is set by the NOTIFY."""
    import threading

    from spotex.processes import listen_for_requests

    with make_postgres_database() as url:
        settings = Settings(database_url=url)
        logs = build_logs(settings, create_tables=True)
        wake, stop = threading.Event(), threading.Event()
        channel = logs.requests.channel_name  # type: ignore[attr-defined]
        thread = listen_for_requests(settings, channel, wake, stop)
        try:
            assert wake.wait(10), "the listener sets wake once it listens"
            for batch in ([(uuid.uuid4(), "admin", deposit("1"), T0)],
                          [(uuid.uuid4(), "admin", deposit(str(n)), T0) for n in range(2, 5)]):
                wake.clear()
                logs.append_requests(batch)
                assert wake.wait(10), "an append must wake the engine"
        finally:
            stop.set()
            thread.join(timeout=5)
        assert not thread.is_alive()
