"""The sequencer and the logs' fast codecs, in memory (POPO).

Scenarios: the bytes ``encode_outcome`` writes are what the library's Mapper decodes into the
same ``Outcome`` and its hash is ``outcome_hash``; the fast request/outcome decoders agree with
the Mapper (and fall back to it); pipelined and one-batch-at-a-time runs write identical logs;
every failure (a refused commit, a request the engine cannot decide, an interrupt) leaves the
state equal to the store and the next run resumes at the first request not committed.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Notification

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
from engine.exchange import Exchange, RequestRecord, canonical
from engine.log import (
    EXCHANGE_STREAM_ID,
    GENESIS_HASH,
    Logs,
    Outcome,
    Request,
    Snapshot,
    encode_outcome,
    outcome_hash,
)
from engine.sequencer import EngineHalted, Sequencer
from spotex.config import Settings, event_store_envs

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def memory_logs() -> Logs:
    return Logs.open(event_store_envs(Settings(database_url="memory://")))


class Appender:
    """Appends a small realistic workload: two traders, limits, markets and cancels."""

    def __init__(self, logs: Logs, seed: int = 1) -> None:
        self.logs = logs
        self.rnd = random.Random(seed)
        self.n = 0
        self.orders: list[tuple[str, str]] = []

    def append(self, command: Command, actor: str | None) -> str:
        self.n += 1
        rid = request_id_for(command, actor) or uuid.UUID(int=self.rnd.getrandbits(128), version=4)
        self.logs.append_request(rid, actor, command.to_log(), T0 + timedelta(milliseconds=self.n))
        return str(rid)

    def setup(self) -> list[str]:
        admin = self.append(RegisterUser(username="admin", password_hash="x", roles=["admin"]), None)
        self.append(ListAsset(symbol="BTC", precision=8), admin)
        self.append(ListAsset(symbol="USDT", precision=6), admin)
        self.append(
            ListMarket(symbol="BTC-USDT", base="BTC", quote="USDT", tick_size="0.01", lot_size="0.0001",
                       taker_fee="0.001"),
            admin,
        )
        users = []
        for name in ("alice", "bob", "carol"):
            users.append(self.append(RegisterUser(username=name, password_hash="x"), None))
            self.append(Deposit(username=name, asset="USDT", amount="1000000", reference="u"), admin)
            self.append(Deposit(username=name, asset="BTC", amount="100", reference="b"), admin)
        self.users = users
        return users

    def orders_(self, count: int) -> None:
        rnd = self.rnd
        for _ in range(count):
            user = rnd.choice(self.users)
            side = rnd.choice(("buy", "sell"))
            r = rnd.random()
            if r < 0.2 and self.orders:
                order_id, owner = self.orders[rnd.randrange(len(self.orders))]
                self.append(CancelOrder(order_id=uuid.UUID(order_id)), owner)
            elif r < 0.3:
                self.append(PlaceOrder(market="BTC-USDT", side=side, type="market", quantity="0.001"), user)
            else:
                price = f"{rnd.randint(29_990, 30_010)}.00"
                qty = f"0.{rnd.randint(1, 50):04d}"
                oid = self.append(
                    PlaceOrder(market="BTC-USDT", side=side, type="limit", price=price, quantity=qty), user
                )
                self.orders.append((oid, user))


def workload(n: int = 300, seed: int = 1) -> Logs:
    logs = memory_logs()
    a = Appender(logs, seed)
    a.setup()
    a.orders_(n)
    return logs


def run_all(seq: Sequencer) -> int:
    total = 0
    while k := seq.step():
        total += k
    return total


def exchange_bytes(logs: Logs) -> list[tuple[int, str, bytes]]:
    return [
        (n.originator_version, n.topic, n.state)
        for n in logs.exchange.select_notifications(start=0, limit=10**9, inclusive_of_start=False)
    ]


def replay_requests(logs: Logs) -> Exchange:
    """A fresh engine re-executing the whole requests log: the reference state."""
    ex = Exchange()
    for r in logs.iter_requests():
        ex.execute(r)
    return ex


def check_log(logs: Logs) -> None:
    """One outcome per request, in order, chained, ending at the tracked position."""
    requests = list(logs.iter_requests())
    outcomes = list(logs.iter_outcomes())
    assert [(o.request_id, o.request_position) for o in outcomes] == [
        (r.request_id, r.position) for r in requests
    ]
    prev = GENESIS_HASH
    for i, o in enumerate(outcomes, 1):
        assert o.seq == i and o.prev_hash == prev
        assert o.hash == outcome_hash(
            prev, o.seq, o.request_id, o.request_position, o.time, o.actor, o.command, o.facts
        )
        prev = o.hash
    assert logs.engine_position() == (requests[-1].position if requests else 0)


# --- codecs ------------------------------------------------------------------------------------

FACTS: list[dict[str, Any]] = [
    {"type": "OrderAccepted", "order_id": "o1", "user_id": "u", "price": 3_000_000, "quantity": 7,
     "post_only": False, "client_order_id": None, "postings": [["u", "USDT", -21, 21]]},
    {"type": "RequestRejected", "command": "Ünïcode \"quoted\" \\ \n\t\x01", "reason": "x", "message": "é𝄞"},
    {"z": 10**40, "a": [True, None, -1, {"b": [], "a": {}}]},
]


@pytest.mark.parametrize("actor", [None, "5f0b7a4e-6c1d-4d0e-9a57-3e8f2b1c9d20"])
@pytest.mark.parametrize("command", [None, "PlaceOrder", "we\"ird\u2028"])
def test_encoded_outcome_is_what_the_mapper_decodes_and_its_hash_is_the_chain_link(
    actor: str | None, command: str | None
) -> None:
    logs = memory_logs()
    time = (T0 + timedelta(microseconds=123)).isoformat()
    request = RequestRecord(str(uuid.uuid4()), 42, time, actor, {"command": command})
    stored, new_hash = encode_outcome(7, "ab" * 32, request, command, FACTS)

    assert new_hash == outcome_hash("ab" * 32, 7, request.request_id, 42, time, actor, command, FACTS)
    expected = Outcome(
        originator_id=EXCHANGE_STREAM_ID, originator_version=7, timestamp=datetime.fromisoformat(time),
        request_id=request.request_id, request_position=42, actor=actor, command=command, facts=FACTS,
        prev_hash="ab" * 32, hash=new_hash,
    )
    assert logs.mapper.to_domain_event(stored) == expected
    # The library's own encoding decodes to the same event: only the facts' key order differs.
    assert json.loads(stored.state) == json.loads(logs.mapper.to_stored_event(expected).state)
    assert stored.topic == logs.mapper.to_stored_event(expected).topic


def test_fast_decoders_agree_with_the_mapper_and_fall_back_to_it() -> None:
    logs = memory_logs()
    commands = [
        {"command": "PlaceOrder", "market": "BTC-USDT", "price": "1.00"},
        {"command": "X", "_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+00:00"},  # hook bait
        {"command": "X", "note": "_type_"},
    ]
    for i, command in enumerate(commands, 1):
        event = Request(originator_id=uuid.uuid4(), originator_version=1,
                        timestamp=T0 + timedelta(seconds=i), actor="a", command=command)
        stored = logs.mapper.to_stored_event(event)
        n = Notification(id=i, originator_id=stored.originator_id, originator_version=1,
                         topic=stored.topic, state=stored.state)
        via_mapper = logs._decode_request(n)
        fast = logs.decode_request(n)
        assert fast == RequestRecord(
            str(via_mapper.originator_id), i, via_mapper.timestamp.isoformat(), via_mapper.actor,
            via_mapper.command,
        )

    request = RequestRecord(str(uuid.uuid4()), 3, T0.isoformat(), None, {})
    stored, _ = encode_outcome(1, GENESIS_HASH, request, None, FACTS)
    n = Notification(id=9, originator_id=stored.originator_id, originator_version=1, topic=stored.topic,
                     state=stored.state)
    o = logs.decode_outcome(n)
    assert (o.position, o.seq, o.time, o.request_position, o.facts) == (9, 1, T0.isoformat(), 3, FACTS)


def test_snapshot_record_is_the_canonical_json_of_its_fields() -> None:
    logs = memory_logs()
    state = {"b": [1, "é"], "a": {"y": None, "x": 10**30}}
    snap = Snapshot(5, 11, 13, "cd" * 32, state)
    logs.save_snapshot(snap)
    stored = logs.snapshots.select_events(uuid.UUID("00000000-0000-4000-8000-00000000ea5e"))[0]
    import zlib

    body = zlib.decompress(stored.state.partition(b"\n")[2])
    assert body == canonical({"seq": 5, "exchange_position": 11, "request_position": 13,
                              "last_hash": "cd" * 32, "state": state})
    assert next(logs.latest_snapshots()) == snap


# --- the sequencer -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_pipelined_and_sequential_runs_write_the_same_log(batch_size: int) -> None:
    logs_a, logs_b = workload(seed=3), workload(seed=3)
    a = Sequencer(logs_a, batch_size=batch_size)
    b = Sequencer(logs_b, batch_size=batch_size, pipeline=True)
    assert run_all(a) == run_all(b) > 300
    assert exchange_bytes(logs_a) == exchange_bytes(logs_b)
    assert (a.seq, a.last_hash, a.request_position) == (b.seq, b.last_hash, b.request_position)
    assert b.exchange.state_hash() == replay_requests(logs_b).state_hash()
    assert b.exchange.check_invariants() == []
    check_log(logs_b)
    b.close()


@pytest.mark.parametrize("pipeline", [False, True])
def test_a_refused_commit_recovers_from_the_store_and_resumes_without_a_gap(pipeline: bool) -> None:
    logs = workload(seed=4)
    seq = Sequencer(logs, batch_size=50, pipeline=pipeline)
    real = logs.commit
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise IntegrityError("refused")
        return real(*args, **kwargs)

    logs.commit = flaky  # type: ignore[method-assign]
    with pytest.raises(IntegrityError):
        run_all(seq)
    assert seq.seq == 100 and seq.request_position == 100
    assert seq.exchange.state_hash() == Sequencer(logs).exchange.state_hash()
    run_all(seq)
    check_log(logs)
    assert seq.exchange.state_hash() == replay_requests(logs).state_hash()
    seq.close()


@pytest.mark.parametrize("pipeline", [False, True])
@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyboardInterrupt()])
def test_a_request_that_fails_halts_the_engine_before_it_and_is_never_skipped(
    pipeline: bool, error: BaseException, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = workload(seed=5)
    bad = list(logs.iter_requests())[123]
    real = Exchange.execute

    def execute(self: Exchange, request: RequestRecord) -> list[dict[str, Any]]:
        if request.request_id == bad.request_id:
            raise error
        return real(self, request)

    monkeypatch.setattr(Exchange, "execute", execute)
    seq = Sequencer(logs, batch_size=10, pipeline=pipeline)
    expected = EngineHalted if isinstance(error, Exception) else KeyboardInterrupt
    with pytest.raises(expected):
        run_all(seq)
    # Everything before the bad request's batch is committed; nothing of it or after.
    assert seq.request_position == 120 and logs.engine_position() == 120
    assert seq.exchange.state_hash() == Sequencer(logs).exchange.state_hash()
    with pytest.raises(expected):  # again: it does not step over the request
        run_all(seq)
    assert logs.engine_position() == 120

    monkeypatch.setattr(Exchange, "execute", real)
    run_all(seq)
    check_log(logs)
    assert seq.exchange.state_hash() == replay_requests(logs).state_hash()
    seq.close()


def test_a_second_engine_is_fenced_by_the_stream_version_and_recovers_instead_of_writing() -> None:
    logs = workload(seed=6)
    first, second = Sequencer(logs, batch_size=40), Sequencer(logs, batch_size=40)
    first.step()
    first.step()
    before = exchange_bytes(logs)
    with pytest.raises(IntegrityError):
        second.step()  # decided the same first batch: seq 1..40 exist already
    assert exchange_bytes(logs) == before
    assert (second.seq, second.request_position) == (first.seq, first.request_position) == (80, 80)
    assert second.exchange.state_hash() == first.exchange.state_hash()
    second.step()  # now it continues the log, and the first one is the stale one
    with pytest.raises(IntegrityError):
        first.step()
    run_all(first)
    check_log(logs)


def test_snapshot_plus_tail_gives_the_state_of_a_replay_from_zero_and_a_corrupt_one_is_skipped() -> None:
    logs = workload(n=400, seed=7)
    seq = Sequencer(logs, batch_size=25, snapshot_every=100, pipeline=True)
    run_all(seq)
    seq.close()
    snaps = list(logs.latest_snapshots(limit=10))
    assert [s.seq for s in snaps] == [400, 300, 200, 100]

    from_snapshot = Sequencer(logs)
    assert from_snapshot.snapshot_seq == 400
    assert from_snapshot.exchange.state_hash() == seq.exchange.state_hash()

    # Corrupt the newest snapshot: recovery skips it and replays the tail after the next one.
    recorder: Any = logs.snapshots
    newest = recorder._stored_events[-1]
    recorder._stored_events[-1] = type(newest)(
        newest.originator_id, newest.originator_version, newest.topic, newest.state[:-5] + b"xxxxx"
    )
    again = Sequencer(logs)
    assert again.snapshot_seq == 300
    assert again.exchange.state_hash() == seq.exchange.state_hash() == replay_requests(logs).state_hash()



def test_an_interrupt_while_a_commit_is_in_flight_recovers_only_after_that_commit_ended() -> None:
    import time
    from concurrent.futures import Future

    logs = workload(seed=9)
    seq = Sequencer(logs, batch_size=50, pipeline=True)
    real_commit = logs.commit

    def slow_commit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # still in flight when the interrupt comes
        return real_commit(*args, **kwargs)

    class Interrupted:
        """A future whose first wait is interrupted (Ctrl-C), as a signal would do it."""

        def __init__(self, future: Future[Any]) -> None:
            self.future, self.waits = future, 0

        def result(self) -> Any:
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return self.future.result()

    executor: Any = seq._executor
    real_submit = executor.submit
    executor.submit = lambda *a, **k: Interrupted(real_submit(*a, **k))
    logs.commit = slow_commit  # type: ignore[method-assign]
    seq.step()  # batch 1 in flight
    with pytest.raises(KeyboardInterrupt):
        seq.step()  # decides batch 2, then the wait for batch 1 is interrupted
    # Recovery waited for batch 1's commit: the state is the store's, batch 1 included.
    assert seq.request_position == logs.engine_position() == 50
    executor.submit = real_submit
    run_all(seq)  # no collision with a commit that landed behind recovery's back
    check_log(logs)
    seq.close()
