"""The sequencer: the single writer that turns the requests log into the exchange log.

It consumes requests strictly in log order, in batches; for each one the engine decides its
facts, which are chained into an outcome (hash of the previous outcome + this one). The batch's
outcomes and the position of its last request are committed in one transaction, so a crash at
any moment loses nothing and applies nothing twice: on restart the state is the latest valid
snapshot plus the committed outcomes after it, and consumption resumes after the tracked
position. If a commit fails (including because another engine wrote first), the in-memory state
is thrown away and rebuilt from the store before anything else happens; if deciding a request
fails, the engine rebuilds the same way and stops there (``EngineHalted``): it never skips one.

Pipelining (``pipeline=True``, what ``spotex engine`` runs): while batch k is being committed by
a worker thread, the next batch is read and decided in memory. Batch k+1 is handed to the
store only after batch k's commit has returned, and if k's commit fails, everything decided
since is discarded by the same recovery, so the store sees exactly the commits, in the order,
that the one-batch-at-a-time loop would make. ``seq``, ``last_hash``, ``exchange_position``
and ``request_position`` always describe what is committed; ``drain()`` waits for the batch in
flight. A snapshot is the state right after its batch was decided, written once that batch is
committed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import StoredEvent

from engine.exchange import Exchange, RequestRecord, canonical
from engine.log import GENESIS_HASH, Logs, Snapshot, encode_outcome

log = logging.getLogger("spotex.engine")


class CorruptLog(RuntimeError):
    """The exchange log does not continue the chain the engine expects; refuse to go on."""


class EngineHalted(RuntimeError):
    """A request made the engine fail; it stops there rather than skip the request."""


@dataclass(slots=True)
class _Batch:
    """A decided batch on its way to the store."""

    stored: list[StoredEvent]
    seq: int
    last_hash: str
    request_position: int
    snapshot_state: bytes | None = None
    future: Future[Any] | None = field(default=None, repr=False)


class Sequencer:
    def __init__(
        self,
        logs: Logs,
        batch_size: int = 1000,
        snapshot_every: int = 100_000,
        check_invariants: bool = False,
        pipeline: bool = False,
    ) -> None:
        self.logs = logs
        self.batch_size = batch_size
        self.snapshot_every = snapshot_every
        self.check_invariants = check_invariants
        self.exchange = Exchange()
        # Committed: what the store holds.
        self.seq = 0
        self.last_hash = GENESIS_HASH
        self.exchange_position = 0
        self.request_position = 0
        # Decided: ahead of the committed fields by the batch in flight, if any.
        self._seq = 0
        self._hash = GENESIS_HASH
        self._position = 0
        self._inflight: _Batch | None = None
        self._executor = ThreadPoolExecutor(1, "spotex-commit") if pipeline else None
        self.last_snapshot_seq = 0
        self.snapshot_seq = 0  # the snapshot recovery started from (0: none)
        self.batches = 0
        self.last_batch_size = 0
        self._broken = True
        self.recover()

    # -- recovery ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild state from the newest valid snapshot and the outcomes committed after it."""
        self._broken = True  # until this returns: a failed recovery must not be built upon
        self._settle()
        self.exchange = Exchange()
        self.seq, self.last_hash = 0, GENESIS_HASH
        self.exchange_position = self.request_position = 0
        self.snapshot_seq = 0
        for snap in self.logs.latest_snapshots():
            assert isinstance(snap.state, dict)
            self.exchange = Exchange.from_state(snap.state)
            self.seq, self.last_hash = snap.seq, snap.last_hash
            self.exchange_position = snap.exchange_position
            self.request_position = snap.request_position
            self.snapshot_seq = snap.seq
            break
        self.last_snapshot_seq = self.seq
        apply_all = self.exchange.apply_all
        for o in self.logs.iter_outcomes(after=self.exchange_position, page=5000):
            if o.seq != self.seq + 1 or o.prev_hash != self.last_hash:
                raise CorruptLog(
                    f"outcome at position {o.position} has seq {o.seq} and prev_hash "
                    f"{o.prev_hash[:12]}…, expected seq {self.seq + 1} after {self.last_hash[:12]}…"
                )
            apply_all(o.facts)
            self.seq, self.last_hash = o.seq, o.hash
            self.exchange_position, self.request_position = o.position, o.request_position
        tracked = self.logs.engine_position()
        if tracked != self.request_position:
            raise CorruptLog(f"tracking says {tracked}, outcomes end at request {self.request_position}")
        self._seq, self._hash, self._position = self.seq, self.last_hash, self.request_position
        self._broken = False

    def _settle(self) -> None:
        """Wait for the batch in flight, whatever its fate (recovery reads the store next).

        The batch stays ``_inflight`` until its commit has ended, so an interrupt during the
        wait leaves it to be waited for again by the next recovery."""
        batch = self._inflight
        if batch is not None and batch.future is not None:
            try:
                batch.future.result()
            except Exception:
                log.warning("the commit of the batch in flight failed; recovering", exc_info=True)
        self._inflight = None

    # -- consuming --------------------------------------------------------------------------

    def step(self) -> int:
        """Consume one batch of requests; returns how many (0 when caught up and committed).

        Without pipelining the batch is committed when this returns; with it, it may still be
        in flight (``drain()``), and a failure of its commit is raised by the next call. Any
        failure (a request the engine cannot decide, a commit refused, an interrupt) leaves
        through ``recover()``: the state is then exactly what the store holds.
        """
        if self._broken:
            self.recover()
        requests = self.logs.read_requests(self._position, self.batch_size)
        if not requests:
            self.drain()
            return 0
        try:
            batch = self._decide(requests)
            self._wait_inflight()
            if self._executor is None:
                self._committed(batch, self.logs.commit(batch.stored, batch.request_position))
            else:
                batch.future = self._executor.submit(self.logs.commit, batch.stored, batch.request_position)
                self._inflight = batch
        except BaseException:
            self.recover()
            raise
        return len(requests)

    def _decide(self, requests: list[RequestRecord]) -> _Batch:
        """Decide a batch in memory: facts, chained and encoded outcomes."""
        stored: list[StoredEvent] = []
        seq, last_hash = self._seq, self._hash
        execute = self.exchange.execute
        for r in requests:
            try:
                facts = execute(r)
                command = r.command.get("command")
                event, last_hash = encode_outcome(
                    seq + 1, last_hash, r, command if isinstance(command, str) else None, facts
                )
            except Exception as exc:
                raise EngineHalted(f"request at position {r.position} ({r.request_id}): {exc!r}") from exc
            seq += 1
            stored.append(event)
        if self.check_invariants:
            violations = self.exchange.check_invariants()
            if violations:
                raise EngineHalted(f"invariants broken after seq {seq}: {violations[:5]}")
        batch = _Batch(stored, seq, last_hash, requests[-1].position)
        if seq - self.last_snapshot_seq >= self.snapshot_every:
            # Encoded now (the state moves on with the next batch), stored once committed.
            batch.snapshot_state = canonical(self.exchange.to_state())
            self.last_snapshot_seq = seq
        self._seq, self._hash, self._position = seq, last_hash, batch.request_position
        return batch

    def _wait_inflight(self) -> None:
        batch = self._inflight
        if batch is None or batch.future is None:
            self._inflight = None
            return
        try:
            positions = batch.future.result()
        except Exception:
            self._inflight = None  # it ended: failed
            raise
        self._inflight = None
        self._committed(batch, positions)

    def drain(self) -> None:
        """Wait for the batch in flight; if its commit failed, recover and raise the error."""
        try:
            self._wait_inflight()
        except BaseException:
            self.recover()
            raise

    def _committed(self, batch: _Batch, positions: Any) -> None:
        self.seq, self.last_hash = batch.seq, batch.last_hash
        self.exchange_position = positions[-1]
        self.request_position = batch.request_position
        self.batches += 1
        self.last_batch_size = len(batch.stored)
        if batch.snapshot_state is not None:
            self._save_snapshot(batch.snapshot_state)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Snapshot the committed state now (nothing may be in flight)."""
        self.drain()
        self._save_snapshot(canonical(self.exchange.to_state()))
        self.last_snapshot_seq = self.seq

    def _save_snapshot(self, state: bytes) -> None:
        snap = Snapshot(self.seq, self.exchange_position, self.request_position, self.last_hash, state)
        try:
            self.logs.save_snapshot(snap)
        except Exception:  # a snapshot only shortens recovery; the log has everything
            log.warning("could not save the snapshot at seq %s", self.seq, exc_info=True)
            return
        log.info("snapshot at seq %s (request position %s)", self.seq, self.request_position)

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        wake: threading.Event | None = None,
        max_idle: float = 0.05,
        min_idle: float = 0.001,
    ) -> None:
        """Consume until ``stop`` is set; idle waits back off from ``min_idle`` to ``max_idle``.

        With a ``wake`` that every append sets, the idle poll is only a fallback and
        ``min_idle`` can be larger: each poll is a query of the requests log.

        On ``stop`` the batch being decided is committed and the loop returns with nothing in
        flight; an error leaves the same way after recovery (the caller decides to exit).
        """
        idle = min_idle
        try:
            while not stop.is_set():
                if self.step():
                    idle = min_idle
                    continue
                if wake is not None:
                    wake.wait(idle)
                    wake.clear()
                else:
                    time.sleep(idle)
                idle = min(idle * 2, max_idle)
        finally:
            self.drain()

    def close(self) -> None:
        """Wait for the batch in flight and stop the commit thread."""
        try:
            self.drain()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
