"""Snapshots, determinism and the single writer, on SQLite and on the real PostgreSQL.

- Replaying the exchange log from position 0 and recovering from a snapshot plus the tail give
  the same state hash (and the same as re-executing the requests).
- A corrupt snapshot (bad checksum, damaged body) is skipped; recovery uses an older one or
  position 0 and still reaches the right state.
- After a snapshot, recovery reads only the outcomes after it (restart cost does not grow with
  the log; ``bench/engine.py`` measures the time).
- Two engines at once: the second one's commit is refused by the exchange stream's version and
  it recovers instead of writing; two ``spotex engine`` processes: one exits 5, the log is whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError
from test_engine_workload import (
    EngineProcess,
    StoreFactory,
    Writer,
    check_exchange_log,
    check_state,
    open_logs,
    store,  # noqa: F401 - the fixture
    wait_until,
)

from engine.log import SNAPSHOT_STREAM_ID, Logs
from engine.sequencer import Sequencer


def filled(logs: Logs, count: int, seed: int = 3) -> Writer:
    writer = Writer(logs, seed=seed)
    writer.setup()
    writer.bulk(count)
    return writer


def run_all(seq: Sequencer) -> None:
    while seq.step():
        pass


def damage_snapshot(logs: Logs, seq: int, how: str) -> None:
    """Overwrite the stored snapshot at ``seq`` in place, with SQL, as a disk fault would."""
    stored = [s for s in logs.snapshots.select_events(SNAPSHOT_STREAM_ID) if s.originator_version == seq]
    assert stored, f"no snapshot at seq {seq}"
    checksum, _, packed = stored[0].state.partition(b"\n")
    if how == "checksum":
        state = b"0" * len(checksum) + b"\n" + packed
    else:  # a byte flipped in the middle of the compressed body
        middle = len(packed) // 2
        state = checksum + b"\n" + packed[:middle] + bytes([packed[middle] ^ 0xFF]) + packed[middle + 1 :]
    recorder: Any = logs.snapshots
    table = recorder.events_table_name
    if hasattr(recorder.datastore, "schema"):  # PostgreSQL
        with recorder.datastore.transaction(commit=True) as curs:
            curs.execute(f"UPDATE {table} SET state = %s WHERE originator_version = %s", (state, seq))
    else:
        with recorder.datastore.transaction(commit=True) as curs:
            curs.execute(f"UPDATE {table} SET state = ? WHERE originator_version = ?", (state, seq))


def test_snapshot_plus_tail_equals_replay_from_zero_and_corrupt_snapshots_are_skipped(
    store: StoreFactory,  # noqa: F811
) -> None:
    with store() as settings:
        logs = open_logs(settings)
        filled(logs, 3000)
        seq = Sequencer(logs, batch_size=250, snapshot_every=700, pipeline=True)
        run_all(seq)
        seq.close()
        assert [s.seq for s in logs.latest_snapshots(limit=10)] == [3000, 2250, 1500, 750]
        total = seq.seq

        from_snapshot = Sequencer(logs)
        assert (from_snapshot.snapshot_seq, from_snapshot.seq) == (3000, total)
        state_hash = check_state(logs)  # replay from 0 and re-execution agree with it
        assert from_snapshot.exchange.state_hash() == seq.exchange.state_hash() == state_hash

        damage_snapshot(logs, 3000, "checksum")
        damage_snapshot(logs, 2250, "body")
        recovered = Sequencer(logs)
        assert recovered.snapshot_seq == 1500
        assert recovered.exchange.state_hash() == state_hash
        assert recovered.exchange.check_invariants() == []

        # latest_snapshots looks at the three newest only: with those all bad, it starts from 0.
        damage_snapshot(logs, 1500, "body")
        from_zero = Sequencer(logs)
        assert from_zero.snapshot_seq == 0
        assert from_zero.exchange.state_hash() == state_hash
        # And it goes on from there exactly as before.
        filled(logs, 200, seed=4)
        run_all(from_zero)
        check_exchange_log(logs)
        check_state(logs)


def test_after_a_snapshot_recovery_reads_only_the_tail(store: StoreFactory) -> None:  # noqa: F811
    with store() as settings:
        logs = open_logs(settings)
        filled(logs, 2000)
        seq = Sequencer(logs, batch_size=500, snapshot_every=10**9)
        run_all(seq)
        decoded = 0
        real = logs.decode_outcome

        def counting(n: Any) -> Any:
            nonlocal decoded
            decoded += 1
            return real(n)

        logs.decode_outcome = counting  # type: ignore[method-assign]
        Sequencer(logs)
        assert decoded == seq.seq  # no snapshot: everything
        seq.snapshot()
        filled(logs, 100, seed=5)
        run_all(seq)
        decoded = 0
        again = Sequencer(logs)
        tail = seq.seq - again.snapshot_seq
        assert decoded == tail < 150
        assert again.exchange.state_hash() == seq.exchange.state_hash()


def test_a_second_engine_is_fenced_and_recovers_instead_of_writing(store: StoreFactory) -> None:  # noqa: F811
    with store() as settings:
        logs_a, logs_b = open_logs(settings), open_logs(settings)  # separate connections
        filled(logs_a, 600)
        a, b = Sequencer(logs_a, batch_size=200), Sequencer(logs_b, batch_size=200, pipeline=True)
        a.step()
        a.step()
        written = check_positions(logs_a)
        with pytest.raises(IntegrityError):
            run_all(b)  # it decided requests 1..200 again: seq 1..200 exist
        assert check_positions(logs_a) == written
        assert (b.seq, b.request_position, b.exchange.state_hash()) == (a.seq, a.request_position,
                                                                          a.exchange.state_hash())
        run_all(b)  # recovered: it continues the log, and now a is the stale one
        with pytest.raises(IntegrityError):
            a.step()
        assert a.exchange.state_hash() == b.exchange.state_hash()
        b.close()
        check_exchange_log(logs_a)
        check_state(logs_a)


def check_positions(logs: Logs) -> list[tuple[int, int]]:
    return [(o.seq, o.request_position) for o in logs.iter_outcomes()]


def test_two_engine_processes_one_is_fenced_and_exits_5(store: StoreFactory, tmp_path: Path) -> None:  # noqa: F811
    with store() as settings:
        logs = open_logs(settings)
        writer = filled(logs, 100)
        first = EngineProcess(settings, tmp_path / "first.log")
        first.wait_ready()
        wait_until(lambda: logs.engine_position() == logs.last_request_position(), 60, "catch-up")
        second = EngineProcess(settings, tmp_path / "second.log")
        second.wait_ready()
        writer.bulk(500)  # both see it; whichever commits second is refused
        wait_until(lambda: first.proc.poll() is not None or second.proc.poll() is not None, 60,
                   "one engine to be fenced")
        loser, winner = (first, second) if first.proc.poll() is not None else (second, first)
        assert loser.wait() == 5, loser.output()
        assert "another engine committed to the exchange log" in loser.output()
        wait_until(lambda: logs.engine_position() == logs.last_request_position(), 60, "catch-up")
        assert winner.terminate() == 0, winner.output()
        check_exchange_log(logs)
        check_state(logs)
