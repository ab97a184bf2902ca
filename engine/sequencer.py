"""The sequencer: the single writer that turns the requests log into the exchange log.

It consumes requests strictly in log order, in batches; for each one the engine decides its
facts, which are chained into an ``Outcome`` (hash of the previous outcome + this one). The
batch's outcomes and the position of its last request are committed in one transaction, so a
crash at any moment loses nothing and applies nothing twice: on restart the state is the latest
valid snapshot plus the committed outcomes after it, and consumption resumes after the tracked
position. If a commit fails (including because another engine wrote first), the in-memory state
is thrown away and rebuilt from the store before anything else happens.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from engine.exchange import Exchange
from engine.log import (
    EXCHANGE_STREAM_ID,
    GENESIS_HASH,
    Logs,
    Outcome,
    Snapshot,
    outcome_hash,
)

log = logging.getLogger("spotex.engine")


class CorruptLog(RuntimeError):
    """The exchange log does not continue the chain the engine expects; refuse to go on."""


class EngineHalted(RuntimeError):
    """A request made the engine fail; it stops there rather than skip the request."""


class Sequencer:
    def __init__(
        self,
        logs: Logs,
        batch_size: int = 1000,
        snapshot_every: int = 100_000,
        check_invariants: bool = False,
    ) -> None:
        self.logs = logs
        self.batch_size = batch_size
        self.snapshot_every = snapshot_every
        self.check_invariants = check_invariants
        self.exchange = Exchange()
        self.seq = 0
        self.last_hash = GENESIS_HASH
        self.exchange_position = 0
        self.request_position = 0
        self.last_snapshot_seq = 0
        self.batches = 0
        self.last_batch_size = 0
        self.recover()

    def recover(self) -> None:
        """Rebuild state from the newest valid snapshot and the outcomes committed after it."""
        self.exchange = Exchange()
        self.seq, self.last_hash = 0, GENESIS_HASH
        self.exchange_position = self.request_position = 0
        for snap in self.logs.latest_snapshots():
            self.exchange = Exchange.from_state(snap.state)
            self.seq, self.last_hash = snap.seq, snap.last_hash
            self.exchange_position = snap.exchange_position
            self.request_position = snap.request_position
            break
        self.last_snapshot_seq = self.seq
        for o in self.logs.iter_outcomes(after=self.exchange_position):
            if o.seq != self.seq + 1 or o.prev_hash != self.last_hash:
                raise CorruptLog(
                    f"outcome at position {o.position} has seq {o.seq} and prev_hash "
                    f"{o.prev_hash[:12]}…, expected seq {self.seq + 1} after {self.last_hash[:12]}…"
                )
            self.exchange.apply_all(o.facts)
            self.seq, self.last_hash = o.seq, o.hash
            self.exchange_position, self.request_position = o.position, o.request_position
        tracked = self.logs.engine_position()
        if tracked != self.request_position:
            raise CorruptLog(f"tracking says {tracked}, outcomes end at request {self.request_position}")

    def step(self) -> int:
        """Consume one batch of requests; returns how many (0 when caught up)."""
        requests = self.logs.read_requests(self.request_position, self.batch_size)
        if not requests:
            return 0
        outcomes = []
        seq, last_hash = self.seq, self.last_hash
        for r in requests:
            try:
                facts = self.exchange.execute(r)
            except Exception as exc:
                self.recover()
                raise EngineHalted(f"request at position {r.position} ({r.request_id}): {exc!r}") from exc
            seq += 1
            command = r.command.get("command")
            name = command if isinstance(command, str) else None
            last_hash = outcome_hash(
                last_hash, seq, r.request_id, r.position, r.time, r.actor, name, facts
            )
            outcomes.append(
                Outcome(
                    originator_id=EXCHANGE_STREAM_ID,
                    originator_version=seq,
                    timestamp=datetime.fromisoformat(r.time),
                    request_id=r.request_id,
                    request_position=r.position,
                    actor=r.actor,
                    command=name,
                    facts=facts,
                    prev_hash=outcomes[-1].hash if outcomes else self.last_hash,
                    hash=last_hash,
                )
            )
        try:
            positions = self.logs.commit(outcomes, requests[-1].position)
        except Exception:
            self.recover()
            raise
        self.seq, self.last_hash = seq, last_hash
        self.exchange_position = positions[-1]
        self.request_position = requests[-1].position
        self.batches += 1
        self.last_batch_size = len(requests)
        if self.check_invariants:
            violations = self.exchange.check_invariants()
            if violations:
                raise EngineHalted(f"invariants broken after seq {seq}: {violations[:5]}")
        if self.seq - self.last_snapshot_seq >= self.snapshot_every:
            self.snapshot()
        return len(requests)

    def snapshot(self) -> None:
        self.logs.save_snapshot(
            Snapshot(
                self.seq,
                self.exchange_position,
                self.request_position,
                self.last_hash,
                self.exchange.to_state(),
            )
        )
        self.last_snapshot_seq = self.seq

    def run(
        self,
        stop: threading.Event,
        wake: threading.Event | None = None,
        max_idle: float = 0.05,
    ) -> None:
        """Consume until ``stop`` is set; idle waits back off to ``max_idle`` seconds."""
        idle = 0.001
        while not stop.is_set():
            if self.step():
                idle = 0.001
                continue
            if wake is not None:
                wake.wait(idle)
                wake.clear()
            else:
                time.sleep(idle)
            idle = min(idle * 2, max_idle)
