"""The audit: replay both logs from position 0 and prove the exchange log from the requests log.

Pure: it takes iterables of recorded requests (``RequestRecord``) and outcomes
(``RecordedOutcome``) in log order — or ``Unreadable`` where a stored event could not be
decoded — and yields ``AuditViolation``s as it finds them; ``Audit.report()`` gives the figures.
Reading the stores and printing belong to ``spotex.audit_cli``.

For every outcome, in exchange-log order:

1. **tamper evidence**: its seq continues 1, 2, 3… (``seq_gap``, ``seq_order``), its
   ``prev_hash`` is the previous outcome's hash (``chain_break``), its content hashes to its
   ``hash`` with ``engine.log.outcome_hash`` (``hash_mismatch``), request positions increase
   (``request_order``). A changed, removed or reordered outcome breaks one of these at the first
   position it touches.
2. **one outcome per request**: the requests log, read in order alongside, must hold exactly the
   requests the outcomes answer. A request the outcomes skip is ``request_without_outcome`` (it is
   still executed: the engine consumes every request); an outcome whose request is not in the log
   is ``missing_request`` (its recorded facts are applied instead, to stay in step); an outcome
   for a request answered earlier is ``outcome_order``. The outcome's request id, time, actor and
   command must be the request's (``request_mismatch``), and a request id derived from an
   idempotency key must be the one its command derives (``request_id_mismatch``).
3. **re-execution**: a fresh ``Exchange`` executes the request and must produce the recorded
   facts, field for field and in order (``reexecution_mismatch``, ``engine_error``). The engine
   keeps the state the requests give, so one changed outcome does not make every later one
   differ; a changed request usually does, and each difference is reported.
4. **ledger** (``engine.audit_ledger``) and **book** (``engine.audit_book``): independent folds
   of the recorded facts.
5. **snapshots**: a stored engine snapshot must equal the re-executed state at its seq.

At the end: the engine's tracking position must be where the outcomes end (``tracking``), and the
re-executed state must pass ``Exchange.check_invariants`` (``engine_invariant``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from domain.commands import COMMANDS, request_id_for
from engine.audit_book import BookCheck
from engine.audit_ledger import LedgerCheck
from engine.exchange import Exchange, RequestRecord, canonical
from engine.log import GENESIS_HASH, RecordedOutcome, outcome_hash

KEYED_COMMANDS = frozenset(
    {"RegisterUser", "ListAsset", "ListMarket", "Deposit", "RequestWithdrawal", "Transfer", "PlaceOrder"}
)


@dataclass(frozen=True, slots=True)
class AuditViolation:
    """One finding: which log, where, which event, a code (see docs/audit.md) and why."""

    log: str  # "exchange", "requests" or "snapshots"
    position: int | None  # position in that log (the seq for snapshots)
    event_id: str | None  # the request id (for an outcome: the request it answers)
    code: str
    message: str
    seq: int | None = None  # the outcome being audited when it was found

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.log} log position {self.position}" if self.position is not None else f"{self.log} log"
        seq = f" (outcome seq {self.seq})" if self.seq is not None else ""
        event = f" event {self.event_id}" if self.event_id else ""
        return f"{where}{seq}{event}: {self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored event that could not be decoded into a request or an outcome."""

    log: str
    position: int
    event_id: str | None
    error: str


Progress = Callable[[int, int], None]  # (outcomes audited, exchange position)


class Audit:
    """One audit run; iterate ``run(...)`` for violations, then read ``report()``."""

    def __init__(
        self,
        *,
        tracked_position: int | None = None,
        snapshots: Mapping[int, Mapping[str, Any]] | None = None,
        progress: Progress | None = None,
        progress_every: int = 100_000,
    ) -> None:
        self.tracked_position = tracked_position
        self.snapshots = dict(snapshots or {})
        self.progress, self.progress_every = progress, progress_every
        self.engine = Exchange()
        self.ledger = LedgerCheck()
        self.book = BookCheck()
        self.outcomes = self.requests = self.snapshots_checked = 0
        self.first_position: int | None = None
        self.last_position: int | None = None
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.last_request_position = 0
        self.violations = 0
        self.first_violation: AuditViolation | None = None
        self._skipped: dict[int, list[dict[str, Any]] | None] = {}

    # -- the run ------------------------------------------------------------------------------

    def run(
        self,
        requests: Iterable[RequestRecord | Unreadable],
        outcomes: Iterable[RecordedOutcome | Unreadable],
    ) -> Iterator[AuditViolation]:
        reqs = iter(requests)
        pending = next(reqs, None)
        for o in outcomes:
            found: list[AuditViolation] = []
            if isinstance(o, Unreadable):
                found.append(AuditViolation("exchange", o.position, o.event_id, "undecodable", o.error))
                self.last_seq += 1
                self.last_hash = ""  # unknown: the next link cannot be checked against it
            else:
                pending = self._outcome(o, pending, reqs, found)
            self.outcomes += 1
            self.first_position = self.first_position or o.position
            self.last_position = o.position
            yield from self._record(found)
            if self.progress is not None and self.outcomes % self.progress_every == 0:
                self.progress(self.outcomes, o.position)
        yield from self._record(self._finish(pending, reqs))

    def _record(self, found: list[AuditViolation]) -> Iterator[AuditViolation]:
        for v in found:
            self.violations += 1
            if self.first_violation is None:
                self.first_violation = v
            yield v

    def _outcome(
        self,
        o: RecordedOutcome,
        pending: RequestRecord | Unreadable | None,
        reqs: Iterator[RequestRecord | Unreadable],
        found: list[AuditViolation],
    ) -> RequestRecord | Unreadable | None:
        def v(
            code: str,
            message: str,
            log: str = "exchange",
            position: int | None = o.position,
            event_id: str | None = o.request_id,
        ) -> None:
            found.append(AuditViolation(log, position, event_id, code, message, o.seq))

        # 1. the chain
        expected = self.last_seq + 1
        if o.seq > expected:
            v(
                "seq_gap",
                f"seq {o.seq} follows {self.last_seq}: outcome(s) {expected}..{o.seq - 1} are missing",
            )
        elif o.seq < expected:
            v("seq_order", f"seq {o.seq} follows {self.last_seq}: outcomes are reordered or repeated")
        if self.last_hash and o.prev_hash != self.last_hash:
            v(
                "chain_break",
                f"prev_hash {o.prev_hash[:16]}… is not the previous outcome's hash {self.last_hash[:16]}…",
            )
        digest = outcome_hash(
            o.prev_hash, o.seq, o.request_id, o.request_position, o.time, o.actor, o.command, o.facts
        )
        if digest != o.hash:
            v(
                "hash_mismatch",
                f"its content hashes to {digest[:16]}…, recorded {o.hash[:16]}…: "
                "changed after it was written",
            )
        if o.request_position <= self.last_request_position:
            v(
                "request_order",
                f"answers request position {o.request_position}, not after {self.last_request_position}",
            )
        self.last_seq, self.last_hash = o.seq, o.hash

        # 2. the request it answers
        while pending is not None and pending.position < o.request_position:
            self._skip(pending, found, o.seq)
            pending = next(reqs, None)
        if pending is not None and pending.position == o.request_position:
            if isinstance(pending, Unreadable):
                v("undecodable", pending.error, "requests", pending.position, pending.event_id)
                self._apply_recorded(o, v)
            else:
                self.requests += 1
                self._check_request(pending, o, v)
                facts = self._execute(pending, v)
                if facts is not None and facts != o.facts:
                    v("reexecution_mismatch", describe_difference(o.facts, facts))
            pending = next(reqs, None)
        elif o.request_position in self._skipped:
            executed = self._skipped.pop(o.request_position)
            v("outcome_order", f"answers request position {o.request_position}, whose turn had passed")
            if executed is not None and executed != o.facts:
                v("reexecution_mismatch", describe_difference(o.facts, executed))
        else:
            v(
                "missing_request",
                f"the outcome at exchange position {o.position} answers request "
                f"{o.request_id}, which the requests log does not hold here",
                "requests",
                o.request_position,
            )
            self._apply_recorded(o, v)
        self.last_request_position = max(self.last_request_position, o.request_position)

        # 3. the independent folds of the recorded facts
        for code, message in self.ledger.outcome(o.facts):
            v(code, message)
        for code, message in self.book.outcome(o.facts):
            v(code, message)

        # 4. a stored snapshot at this seq must be the re-executed state
        snap = self.snapshots.pop(o.seq, None)
        if snap is not None:
            self.snapshots_checked += 1
            want = {
                "exchange_position": o.position,
                "request_position": o.request_position,
                "last_hash": o.hash,
                "state": self.engine.to_state(),
            }
            got = {k: snap.get(k) for k in want}
            if canonical(got) != canonical(want):
                bad = sorted(k for k in want if canonical(got[k]) != canonical(want[k]))
                v(
                    "snapshot_mismatch",
                    f"the snapshot at seq {o.seq} differs from the re-executed state in {', '.join(bad)}",
                    "snapshots",
                    o.seq,
                    None,
                )
        return pending

    def _skip(self, r: RequestRecord | Unreadable, found: list[AuditViolation], seq: int) -> None:
        """A request that no outcome answers at its turn: the engine must still consume it."""
        if isinstance(r, Unreadable):
            found.append(AuditViolation("requests", r.position, r.event_id, "undecodable", r.error, seq))
            return
        found.append(
            AuditViolation(
                "requests",
                r.position,
                r.request_id,
                "request_without_outcome",
                "no outcome answers this request at its turn: its outcome was removed or moved, "
                "or the request was inserted",
                seq,
            )
        )
        facts = self._execute(
            r,
            lambda code, message: found.append(
                AuditViolation("requests", r.position, r.request_id, code, message, seq)
            ),
        )
        if len(self._skipped) < 10_000:
            self._skipped[r.position] = facts

    def _execute(self, r: RequestRecord, v: Callable[..., None]) -> list[dict[str, Any]] | None:
        try:
            return self.engine.execute(r)
        except Exception as exc:  # the engine failed where it once succeeded: report, go on
            v("engine_error", f"re-executing request {r.request_id} raised {exc!r}")
            return None

    def _apply_recorded(self, o: RecordedOutcome, v: Callable[..., None]) -> None:
        try:
            self.engine.apply_all(o.facts)
        except Exception as exc:
            v("engine_error", f"applying the recorded facts raised {exc!r}")

    def _check_request(self, r: RequestRecord, o: RecordedOutcome, v: Callable[..., None]) -> None:
        name = r.command.get("command")
        got = (r.request_id, r.time, r.actor, name if isinstance(name, str) else None)
        want = (o.request_id, o.time, o.actor, o.command)
        for field, g, w in zip(("request id", "time", "actor", "command"), got, want, strict=True):
            if g != w:
                v(
                    "request_mismatch",
                    f"its {field} is {g!r}, the outcome at exchange position {o.position} answers {w!r}",
                    "requests",
                    r.position,
                    r.request_id,
                )
        if name in KEYED_COMMANDS and (name != "PlaceOrder" or r.command.get("client_order_id")):
            try:
                fields = {k: x for k, x in r.command.items() if k != "command"}
                derived = request_id_for(COMMANDS[name].model_construct(**fields), r.actor)
            except Exception:  # a malformed command has no derived id: re-execution judges it
                derived = None
            if derived is not None and str(derived) != r.request_id:
                v(
                    "request_id_mismatch",
                    f"its command's idempotency key derives id {derived}, "
                    f"not {r.request_id}: the command was changed",
                    "requests",
                    r.position,
                    r.request_id,
                )

    def _finish(
        self, pending: RequestRecord | Unreadable | None, reqs: Iterator[RequestRecord | Unreadable]
    ) -> list[AuditViolation]:
        found: list[AuditViolation] = []
        tracked = self.tracked_position
        if tracked is not None:
            while pending is not None and pending.position <= tracked:
                self._skip(pending, found, self.last_seq)
                pending = next(reqs, None)
            if tracked < self.last_request_position:
                found.append(
                    AuditViolation(
                        "exchange",
                        self.last_position,
                        None,
                        "tracking",
                        f"the engine's tracking position {tracked} is behind the last "
                        f"request answered, {self.last_request_position}",
                    )
                )
        for snap_seq in sorted(self.snapshots):
            found.append(
                AuditViolation(
                    "snapshots",
                    snap_seq,
                    None,
                    "snapshot_mismatch",
                    f"a snapshot at seq {snap_seq} has no outcome with that seq",
                )
            )
        for bad in self.engine.check_invariants():
            found.append(
                AuditViolation(
                    "exchange",
                    self.last_position,
                    None,
                    "engine_invariant",
                    f"{bad.code} {bad.subject}: {bad.message}",
                )
            )
        return found

    # -- figures ------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Counts per fact type, per-asset totals in units, positions audited, the state hash."""
        assets: dict[str, dict[str, int]] = {}
        for (account, asset), (available, frozen) in sorted(self.ledger.balances.items()):
            row = assets.setdefault(
                asset, {"custody": 0, "fees": 0, "users_available": 0, "users_frozen": 0, "sum": 0}
            )
            if account == "@custody":
                row["custody"] += available + frozen
            elif account == "@fees":
                row["fees"] += available + frozen
            else:
                row["users_available"] += available
                row["users_frozen"] += frozen
            row["sum"] += available + frozen
        return {
            "outcomes": self.outcomes,
            "requests": self.requests,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "last_seq": self.last_seq,
            "last_request_position": self.last_request_position,
            "head_hash": self.last_hash,
            "state_hash": self.engine.state_hash(),
            "facts": dict(sorted(self.ledger.counts.items())),
            "assets": assets,
            "precisions": dict(self.ledger.precisions),
            "snapshots_checked": self.snapshots_checked,
            "violations": self.violations,
        }


def describe_difference(recorded: list[dict[str, Any]], executed: list[dict[str, Any]]) -> str:
    """The first place where re-executed facts differ from the recorded ones, in words."""
    for i, (r, e) in enumerate(zip(recorded, executed, strict=False)):
        if r == e:
            continue
        if r.get("type") != e.get("type"):
            return f"fact {i}: recorded {r.get('type')}, re-execution gives {e.get('type')}"
        for key in list(dict.fromkeys([*r, *e])):
            if r.get(key, "<absent>") != e.get(key, "<absent>"):
                return (
                    f"fact {i} ({r.get('type')}) field {key}: recorded {r.get(key, '<absent>')!r}, "
                    f"re-execution gives {e.get(key, '<absent>')!r}"
                )
    return (
        f"recorded {len(recorded)} facts {[f.get('type') for f in recorded]}, re-execution gives "
        f"{len(executed)} {[f.get('type') for f in executed]}"
    )
