"""The audit: replay both logs from position 0 and prove the exchange log from the requests log.

Pure: it takes iterables of recorded requests (``RequestRecord``) and outcomes
(``RecordedOutcome``) in log order — ``Unreadable`` where a stored event could not be decoded —
and yields ``AuditViolation``s as it finds them; ``Audit.report()`` gives the figures. Reading
the stores and printing belong to ``spotex.audit_cli``.

For every outcome, in exchange-log order, four parts (each can be switched off, so that
the work can be timed or split by part; the CLI splits the log by segments instead, see
``engine.audit_seed``):

- ``chain`` — tamper evidence: its seq continues 1, 2, 3… (``seq_gap``, ``seq_order``), its
  ``prev_hash`` is the previous outcome's hash (``chain_break``), its content hashes to its
  ``hash`` by ``engine.log.outcome_hash`` (``hash_mismatch``), request positions increase
  (``request_order``). A changed, removed or reordered outcome breaks one of these at the first
  position it touches. An undecodable outcome is ``undecodable``.
- ``reexecute`` — one outcome per request, the same facts again from a fresh engine
  (``engine.audit_reexec``); this is what catches a changed or removed request.
- ``ledger`` — an independent fold of postings, holds, fees and idempotency keys
  (``engine.audit_ledger``).
- ``book`` — an independent model of resting orders: price-time priority, maker's price, never
  crossed (``engine.audit_book``).

Every violation names its log, its position there, the outcome seq being audited and the event;
they come in the order found, so the first one names the first position affected.

At a stored snapshot the auditor's own folds must also equal what the snapshot holds
(``engine.audit_seed.fold_differences``, a ``snapshot_mismatch``). That is what lets a run start
at a proven snapshot (``start``) with its folds seeded from it, and the log be audited in
segments on several processes (``spotex.audit_cli``) with the same findings as one run from
position 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from mypy_extensions import mypyc_attr

from engine.audit_book import BookCheck
from engine.audit_ledger import LedgerCheck
from engine.audit_reexec import Reexecution
from engine.audit_seed import fold_differences, seeded
from engine.exchange import RequestRecord
from engine.log import GENESIS_HASH, RecordedOutcome, outcome_hash

PARTS = ("chain", "reexecute", "ledger", "book")


# A plain Python class even when this module is compiled (setup.py): the segment workers send
# their findings back pickled, and a compiled frozen dataclass does not unpickle.
@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True)
class AuditViolation:
    """One finding: which log, where, which event, a code (see docs/audit.md) and why."""

    log: str  # "exchange", "requests" or "snapshots"
    position: int | None  # position in that log (the seq for snapshots)
    event_id: str | None  # the request id (for an outcome: the request it answers)
    code: str
    message: str
    seq: int | None = None  # the outcome being audited when it was found
    request_position: int | None = None  # the request that outcome answers

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


# A plain Python class even when compiled: it subclasses engine.log's RecordedOutcome, which is
# not compiled, and a compiled class may neither subclass a Python one nor have __slots__.
@mypyc_attr(native_class=False)
@dataclass(frozen=True)
class StoredOutcome(RecordedOutcome):
    """A recorded outcome with the stored bytes of its facts, given by the reader only when the
    stored state has exactly the layout ``engine.log.encode_outcome`` writes around them (checked
    against the decoded fields). Those bytes are then what the engine hashed, so the chain can be
    checked over them without encoding the facts again: if they hash right they are unchanged,
    and the decoded facts, parsed from exactly them, are too."""

    facts_json: str | bytes | None = None


class Undecided:
    """A stored outcome whose head is decoded and whose facts are not, yet: the reader
    (``engine.audit_decode.decode_outcome_head``) gives one when the stored state is laid out
    exactly as ``engine.log.encode_outcome`` writes it, every head field in the one form the
    canonical encoding gives it (so those bytes are what the engine hashed too).

    ``Audit`` decides it before anything else is checked: it re-executes the request the
    outcome answers, and when the canonical bytes of the re-executed facts are the stored facts'
    bytes, the recorded facts *are* those facts (the same JSON), so they are taken as they are
    and never parsed: ``facts`` is set to them and this object is then audited as the outcome
    (it has every field of a ``RecordedOutcome``). Otherwise ``decode()`` gives what the full
    decoder makes of the stored event, exactly as if it had been decoded in the first place.

    A plain class with its own ``__init__``, not a dataclass: compiled (setup.py), a dataclass's
    generated ``__init__`` stays interpreted, and one is made per outcome."""

    position: int
    seq: int
    time: str
    request_id: str
    request_position: int
    actor: str | None
    command: str | None
    prev_hash: str
    hash: str
    facts_json: bytes
    facts: list[dict[str, Any]]  # set when decided, never before

    def __init__(
        self,
        position: int,
        seq: int,
        time: str,
        request_id: str,
        request_position: int,
        actor: str | None,
        command: str | None,
        prev_hash: str,
        hash: str,
        facts_json: bytes,
        decoder: Callable[[Any], StoredOutcome | Unreadable],
        stored: Any,
    ) -> None:
        self.position, self.seq, self.time = position, seq, time
        self.request_id, self.request_position = request_id, request_position
        self.actor, self.command = actor, command
        self.prev_hash, self.hash, self.facts_json = prev_hash, hash, facts_json
        self.decoder, self.stored = decoder, stored

    def decode(self) -> StoredOutcome | Unreadable:
        """The stored event decoded in full."""
        return self.decoder(self.stored)


# What the checks take: a decoded outcome, or an Undecided whose facts were decided.
Outcome = RecordedOutcome | Undecided


Progress = Callable[[int, int], None]  # (outcomes audited, exchange position)

# The same bytes as ``engine.exchange.canonical``, without building an encoder per call; a
# mismatch is confirmed with ``outcome_hash`` itself before it is reported.
_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_string = json.encoder.encode_basestring  # what that encoder does with a str, without its dispatch
_dumps, _SORT_KEYS = orjson.dumps, orjson.OPT_SORT_KEYS


def scalar_json(value: Any) -> str:
    """``_encode(value)`` for the scalars of an outcome's head (str, int, None) without the
    encoder's dispatch: the same bytes (``int.__repr__`` is what json writes for an int)."""
    kind = type(value)
    if kind is str:
        return _string(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    return _encode(value)



def _undecided_head(o: Undecided) -> str:
    """``_chain_hash``'s head of an ``Undecided``, its scalars written directly: its strings are
    free of what JSON escapes (the reader's pattern admits no quote, backslash or control
    character), so their JSON is the string in quotes, and its seq and request position are
    ints (typed), written as json writes them."""
    actor, command = o.actor, o.command
    a = "null" if actor is None else f'"{actor}"'
    c = "null" if command is None else f'"{command}"'
    return f'{o.prev_hash}[{o.seq},"{o.request_id}",{o.request_position},"{o.time}",{a},{c},'


def _chain_hash(o: Outcome) -> str:
    if type(o) is Undecided:
        h = hashlib.sha256(_undecided_head(o).encode())
        h.update(o.facts_json)
        h.update(b"]")
        return h.hexdigest()
    facts_json = getattr(o, "facts_json", None)
    if facts_json is None:
        body = _encode([o.seq, o.request_id, o.request_position, o.time, o.actor, o.command, o.facts])
        return hashlib.sha256((o.prev_hash + body).encode()).hexdigest()
    # canonical([...]) is its items' canonical encodings joined by commas (scalar_json called by
    # its name: through a local alias, compiled, each call went through the generic call path)
    head = (
        f"{o.prev_hash}[{scalar_json(o.seq)},{scalar_json(o.request_id)},"
        f"{scalar_json(o.request_position)},{scalar_json(o.time)},{scalar_json(o.actor)},"
        f"{scalar_json(o.command)},"
    )
    h = hashlib.sha256(head.encode())
    h.update(facts_json if type(facts_json) is bytes else facts_json.encode())
    h.update(b"]")
    return h.hexdigest()


def canonical_facts(facts: list[dict[str, Any]]) -> bytes | None:
    """``engine.exchange.canonical(facts)`` by orjson, or None where orjson cannot say (an
    integer beyond 64 bits, a key that is not a string, …). Only ever compared for equality with
    stored bytes: where orjson's form of some value differs from the canonical one the bytes
    differ and the slow path decides, so an answer is never wrong, at worst slower."""
    try:
        return _dumps(facts, option=_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return None


class Audit:
    """One audit run; iterate ``run(...)`` for violations, then read ``report()``."""

    def __init__(
        self,
        *,
        parts: Iterable[str] = PARTS,
        tracked_position: int | None = None,
        snapshots: Mapping[int, Mapping[str, Any]] | None = None,
        progress: Progress | None = None,
        progress_every: int = 100_000,
        start: Mapping[str, Any] | None = None,
        known_ids: Iterable[str] = (),
        final: bool = True,
    ) -> None:
        """``start``: a stored snapshot record (seq, exchange_position, request_position,
        last_hash, state) already proven by the audit up to it, to begin after instead of at
        position 0; ``known_ids``: the ids applied before it that the snapshot does not hold;
        ``final``: this run reaches the end of what is audited (tracking position, leftover
        snapshots, the engine's invariants are checked at its end)."""
        self.parts = frozenset(parts)
        unknown = self.parts - set(PARTS)
        if unknown:
            raise ValueError(f"unknown audit parts {sorted(unknown)}")
        # the parts as flags, read per outcome
        self._chain_on, self._ledger_on = "chain" in self.parts, "ledger" in self.parts
        self._book_on = "book" in self.parts
        self.tracked_position = tracked_position
        self.snapshots = snapshots or {}
        self.progress, self.progress_every = progress, progress_every
        self.start, self.final = start, final
        self.ledger = LedgerCheck()
        self.book = BookCheck()
        self.reexec: Reexecution | None = None
        self.outcomes = 0
        self.first_position: int | None = None
        self.last_position: int | None = None
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.last_request_position = 0
        if start is not None:
            self.last_seq, self.last_hash = start["seq"], start["last_hash"]
            self.last_position = start["exchange_position"]
            self.last_request_position = start["request_position"]
            self.ledger, self.book = seeded(start["state"])
        self.ledger.ids.update(known_ids)
        self.seeded_ids = frozenset(self.ledger.ids)
        self.violations = 0
        self.first_violation: AuditViolation | None = None

    def run(
        self,
        requests: Iterable[RequestRecord | Unreadable],
        outcomes: Iterable[Outcome | Unreadable],
    ) -> Iterator[AuditViolation]:
        if "reexecute" in self.parts:
            self.reexec = Reexecution(iter(requests), self.snapshots, self.start)
        for item in outcomes:
            found: list[AuditViolation] = []
            o = self._decide(item) if isinstance(item, Undecided) else item
            if isinstance(o, Unreadable):
                if self._chain_on:
                    found.append(
                        AuditViolation(
                            "exchange", o.position, o.event_id, "undecodable", o.error, self.last_seq + 1
                        )
                    )
                self.last_seq += 1
                self.last_hash = ""  # unknown: the next link cannot be checked against it
            else:
                self._outcome(o, found)
            self.outcomes += 1
            self.first_position = self.first_position or o.position
            self.last_position = o.position
            if found:
                yield from self._record(found)
            if self.progress is not None and self.outcomes % self.progress_every == 0:
                self.progress(self.outcomes, o.position)
        if self.reexec is not None:
            found = []
            self.reexec.finish(
                self.tracked_position,
                self.last_request_position,
                self._reporter(None, found),
                last_seq=self.last_seq,
                final=self.final,
            )
            yield from self._record(found)

    def _decide(self, o: Undecided) -> Outcome | Unreadable:
        """The stored outcome with its facts: itself with the re-executed ones when their
        canonical bytes are the stored ones, else the stored event decoded in full (see
        ``Undecided``)."""
        if self.reexec is not None:
            executed = self.reexec.execute_ahead(o.request_position)
            if executed is not None and canonical_facts(executed) == o.facts_json:
                o.facts = executed
                return o
        return o.decode()

    def _record(self, found: list[AuditViolation]) -> Iterator[AuditViolation]:
        for v in found:
            self.violations += 1
            if self.first_violation is None:
                self.first_violation = v
            yield v

    def _reporter(self, o: Outcome | None, found: list[AuditViolation]) -> Callable[..., None]:
        seq = o.seq if o is not None else None
        answers = o.request_position if o is not None else None
        default_position = o.position if o is not None else self.last_position
        default_event = o.request_id if o is not None else None

        def v(
            code: str,
            message: str,
            log: str = "exchange",
            position: int | None = default_position,
            event_id: str | None = default_event,
        ) -> None:
            found.append(AuditViolation(log, position, event_id, code, message, seq, answers))

        return v

    def _outcome(self, o: Outcome, found: list[AuditViolation]) -> None:
        v = self._reporter(o, found)
        if self._chain_on:
            self._chain(o, v)
        self.last_seq, self.last_hash = o.seq, o.hash
        if self.reexec is not None:
            self.reexec.outcome(o, v)
        self.last_request_position = max(self.last_request_position, o.request_position)
        if self._ledger_on:
            for code, message in self.ledger.outcome(o.facts):
                v(code, message)
        if self._book_on:
            for code, message in self.book.outcome(o.facts):
                v(code, message)
        if self.reexec is not None:
            self.reexec.check_snapshot(o, v)
        snap = self.snapshots.get(o.seq)
        if snap is not None and (self._ledger_on or self._book_on):
            self._check_folds(o.seq, snap, v)

    def _check_folds(self, seq: int, snap: Mapping[str, Any], v: Callable[..., None]) -> None:
        state = snap.get("state")
        differ = (
            fold_differences(
                self.ledger if "ledger" in self.parts else None,
                self.book if "book" in self.parts else None,
                state,
            )
            if isinstance(state, dict)
            else ["state"]
        )
        if differ:
            v(
                "snapshot_mismatch",
                f"the snapshot at seq {seq} differs from the auditor's own folds in {', '.join(differ)}",
                log="snapshots",
                position=seq,
                event_id=None,
            )

    def new_ids(self) -> set[str]:
        """The order, deposit, withdrawal and transfer ids first applied in this run."""
        return self.ledger.ids.difference(self.seeded_ids)

    def _chain(self, o: Outcome, v: Callable[..., None]) -> None:
        expected = self.last_seq + 1
        if o.seq > expected:
            v(
                "seq_gap",
                f"seq {o.seq} follows {self.last_seq}: outcomes {expected}..{o.seq - 1} are missing "
                f"(removed after position {self.last_position or 0})",
            )
        elif o.seq < expected:
            v("seq_order", f"seq {o.seq} follows {self.last_seq}: outcomes are reordered or repeated")
        if self.last_hash and o.prev_hash != self.last_hash:
            v(
                "chain_break",
                f"prev_hash {o.prev_hash[:16]}… is not the previous outcome's hash {self.last_hash[:16]}…",
            )
        digest = _chain_hash(o)
        if digest != o.hash:
            if getattr(o, "facts_json", None) is None:  # confirm with the engine's own function
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

    # -- figures ------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Counts per fact type, per-asset totals in units, positions audited, the state hash."""
        out: dict[str, Any] = {
            "parts": sorted(self.parts),
            "outcomes": self.outcomes,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "last_seq": self.last_seq,
            "last_request_position": self.last_request_position,
            "violations": self.violations,
        }
        if "chain" in self.parts:
            out["head_hash"] = self.last_hash
        if self.reexec is not None:
            out["requests"] = self.reexec.executed
            if self.final:  # a segment's end state is its end snapshot's, which it checked
                out["state_hash"] = self.reexec.engine.state_hash()
            out["snapshots_checked"] = self.reexec.snapshots_checked
        if "ledger" in self.parts:
            out["facts"] = dict(sorted(self.ledger.counts.items()))
            out["assets"] = asset_totals(self.ledger.balances)
            out["precisions"] = dict(self.ledger.precisions)
        return out


def asset_totals(balances: Mapping[tuple[str, str], list[int]]) -> dict[str, dict[str, int]]:
    """Per asset: what custody, fees and users hold (units); the sum must be zero."""
    assets: dict[str, dict[str, int]] = {}
    for (account, asset), (available, frozen) in sorted(balances.items()):
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
    return assets
