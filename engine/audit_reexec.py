"""Re-execution proof: pair each outcome with its request and require the same facts again.

The requests log is read in order alongside the exchange log. For an outcome answering request
position R:

- requests before R that no outcome answered are ``request_without_outcome``; they are still
  executed, because the engine consumes every request (so a removed outcome does not make all
  later ones differ);
- the request at R must be the one the outcome names: same request id, time, actor and command
  (``request_mismatch``), and a request id derived from an idempotency key must be the one its
  command derives (``request_id_mismatch``: the command was changed after it was appended);
- a fresh ``Exchange`` executes it and must produce the recorded facts, field for field, in
  order (``reexecution_mismatch``; ``engine_error`` if it raises);
- an outcome whose request is not in the log is ``missing_request`` and its recorded facts are
  applied instead; one whose request was passed over or answered earlier is ``outcome_order``
  (and is not applied again);
- a stored engine snapshot must equal the re-executed state at its seq (``snapshot_mismatch``).

At the end, requests up to the engine's tracking position must all be answered, and the
re-executed state must pass ``Exchange.check_invariants`` (``engine_invariant``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from domain.commands import COMMANDS, request_id_for
from engine.exchange import Exchange, RequestRecord, canonical

if TYPE_CHECKING:
    from engine.audit import Outcome

Fact = dict[str, Any]
Report = Callable[..., None]  # (code, message, log=…, position=…, event_id=…)
KEYED_COMMANDS = frozenset(
    {"RegisterUser", "ListAsset", "ListMarket", "Deposit", "RequestWithdrawal", "Transfer", "PlaceOrder"}
)
MAX_SKIPPED = 10_000  # facts of passed-over requests kept to compare with a late outcome


class Reexecution:
    def __init__(
        self,
        requests: Iterator[Any],
        snapshots: Mapping[int, Mapping[str, Any]],
        start: Mapping[str, Any] | None = None,
    ) -> None:
        """``start``: a proven snapshot record to continue from (see ``engine.audit_seed``);
        ``requests`` then begin after its request position."""
        self.engine = Exchange() if start is None else Exchange.from_state(start["state"])
        self.reqs = requests
        self.pending = next(requests, None)
        self.snapshots = dict(snapshots)
        self.executed = self.snapshots_checked = 0
        self.skipped: dict[int, list[Fact] | None] = {}
        self.answered = 0 if start is None else start["request_position"]  # the last consumed in its turn
        # a request executed ahead of its turn (``execute_ahead``): its position, facts, error
        self.ahead: tuple[int, list[Fact] | None, Exception | None] | None = None

    def _next(self) -> None:
        self.pending = next(self.reqs, None)

    def outcome(self, o: Outcome, v: Report) -> None:
        """Pair the outcome with its request, re-execute it and compare; see the module doc."""
        while self.pending is not None and self.pending.position < o.request_position:
            self.skip(self.pending, v)
            self._next()
        r = self.pending
        if r is not None and r.position == o.request_position:
            self._next()
            self.answered = r.position
            if not isinstance(r, RequestRecord):  # Unreadable
                v("undecodable", r.error, log="requests", position=r.position, event_id=r.event_id)
                self.apply_recorded(o, v)
                return
            self.check_request(r, o, v)
            facts = self.execute(r, v)
            if facts is not None and facts != o.facts:
                where = f"re-executing the request at requests log position {r.position}: "
                v("reexecution_mismatch", where + describe_difference(o.facts, facts))
        elif o.request_position in self.skipped:
            executed = self.skipped.pop(o.request_position)
            v("outcome_order", f"answers request position {o.request_position}, whose turn had passed")
            if executed is not None and executed != o.facts:
                v("reexecution_mismatch", describe_difference(o.facts, executed))
        elif o.request_position <= self.answered:  # its request was consumed already: not again
            v(
                "outcome_order",
                f"answers request position {o.request_position}, which was answered before "
                "(a duplicated or moved outcome)",
            )
        else:
            v(
                "missing_request",
                f"the outcome at exchange position {o.position} answers request {o.request_id}, "
                "which the requests log does not hold at this position",
                log="requests",
                position=o.request_position,
            )
            self.apply_recorded(o, v)

    def skip(self, r: Any, v: Report) -> None:
        """A request that no outcome answers at its turn: the engine must still consume it."""
        if not isinstance(r, RequestRecord):
            v("undecodable", r.error, log="requests", position=r.position, event_id=r.event_id)
            return
        v(
            "request_without_outcome",
            "no outcome answers this request at its turn: its outcome was removed or moved, "
            "or the request was inserted",
            log="requests",
            position=r.position,
            event_id=r.request_id,
        )
        facts = self.execute(r, v)
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped[r.position] = facts

    def execute(self, r: RequestRecord, v: Report) -> list[Fact] | None:
        self.executed += 1
        ahead = self.ahead
        if ahead is not None and ahead[0] == r.position:
            self.ahead = None
            facts, error = ahead[1], ahead[2]
        else:
            try:
                facts, error = self.engine.execute(r), None
            except Exception as exc:
                facts, error = None, exc
        if error is not None:  # the engine failed where it once succeeded: report, go on
            v("engine_error", f"re-executing request {r.request_id} raised {error!r}")
        return facts

    def execute_ahead(self, request_position: int) -> list[Fact] | None:
        """The facts of the request an outcome about to be audited answers, executed now when
        it is the next request in the log (None otherwise, or if the engine raised). The request
        stays pending: ``execute`` takes these facts (or the error) when its turn comes, which
        is before the engine does anything else, so it sees the same sequence as without this.
        The one exception needs an outcome whose stored facts do not decode (its head intact)
        followed by the end of the run or by an outcome whose request is missing from the log:
        the engine then has already executed the request of the undecodable outcome (both are
        violations anyway)."""
        r = self.pending
        if type(r) is not RequestRecord or r.position != request_position:
            return None
        ahead = self.ahead
        if ahead is not None and ahead[0] == r.position:
            return ahead[1]
        try:
            facts, error = self.engine.execute(r), None
        except Exception as exc:
            facts, error = None, exc
        self.ahead = (r.position, facts, error)
        return facts

    def apply_recorded(self, o: Outcome, v: Report) -> None:
        try:
            self.engine.apply_all(o.facts)
        except Exception as exc:
            v("engine_error", f"applying the recorded facts raised {exc!r}")

    def check_request(self, r: RequestRecord, o: Outcome, v: Report) -> None:
        name = r.command.get("command")
        got = (r.request_id, r.time, r.actor, name if isinstance(name, str) else None)
        want = (o.request_id, o.time, o.actor, o.command)
        if got != want:
            for field, g, w in zip(("request id", "time", "actor", "command"), got, want, strict=True):
                if g != w:
                    v(
                        "request_mismatch",
                        f"its {field} is {g!r}, the outcome at exchange position {o.position} answers {w!r}",
                        log="requests",
                        position=r.position,
                        event_id=r.request_id,
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
                    f"its command's idempotency key derives id {derived}, not {r.request_id}: "
                    "the command was changed after it was appended",
                    log="requests",
                    position=r.position,
                    event_id=r.request_id,
                )

    def check_snapshot(self, o: Outcome, v: Report) -> None:
        snap = self.snapshots.pop(o.seq, None)
        if snap is None:
            return
        self.snapshots_checked += 1
        want = {
            "exchange_position": o.position,
            "request_position": o.request_position,
            "last_hash": o.hash,
            "state": self.engine.to_state(),
        }
        bad = sorted(k for k in want if not _same_json(snap.get(k), want[k]))
        if bad:
            v(
                "snapshot_mismatch",
                f"the snapshot at seq {o.seq} differs from the re-executed state in {', '.join(bad)}",
                log="snapshots",
                position=o.seq,
                event_id=None,
            )

    def finish(
        self,
        tracked: int | None,
        last_request_position: int,
        v: Report,
        *,
        last_seq: int | None = None,
        final: bool = True,
    ) -> None:
        """At the end of the run: requests up to ``tracked`` answered, no snapshot left
        unchecked (past ``last_seq``, on a partial audit, they are not audited), the engine's
        invariants; a run that is not ``final`` ends at a snapshot and checks that it met it."""
        if tracked is not None:
            while self.pending is not None and self.pending.position <= tracked:
                self.skip(self.pending, v)
                self._next()
            if tracked < last_request_position:
                v(
                    "tracking",
                    f"the engine's tracking position {tracked} is behind the last request "
                    f"answered, {last_request_position}",
                )
        for seq in sorted(self.snapshots):
            if final and tracked is None and last_seq is not None and seq > last_seq:
                continue  # beyond the part of the log audited (--until)
            v(
                "snapshot_mismatch",
                f"a snapshot at seq {seq} has no outcome with that seq",
                log="snapshots",
                position=seq,
                event_id=None,
            )
        if not final:
            return
        for bad in self.engine.check_invariants():
            v("engine_invariant", f"{bad.code} {bad.subject}: {bad.message}")


def _same_json(a: Any, b: Any) -> bool:
    """``canonical(a) == canonical(b)`` for JSON values (a decoded snapshot, ``to_state``).

    orjson's sorted-key bytes first, an order of magnitude cheaper on a state of thousands of
    orders: two JSON values it writes the same are the same value (same types, numbers, strings,
    keys), which ``canonical`` writes the same too. Anything else (bytes that differ, a value
    orjson refuses) is decided by ``canonical`` itself."""
    try:
        if orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS):
            return True
    except (orjson.JSONEncodeError, TypeError):
        pass
    return canonical(a) == canonical(b)


def describe_difference(recorded: list[Fact], executed: list[Fact]) -> str:
    """The first place where re-executed facts differ from the recorded ones, in words."""
    for i, (r, e) in enumerate(zip(recorded, executed, strict=False)):
        if r == e:
            continue
        if r.get("type") != e.get("type"):
            return f"fact {i}: recorded {r.get('type')}, re-execution gives {e.get('type')}"
        for key in dict.fromkeys([*r, *e]):
            if r.get(key, "<absent>") != e.get(key, "<absent>"):
                return (
                    f"fact {i} ({r.get('type')}) field {key}: recorded {r.get(key, '<absent>')!r}, "
                    f"re-execution gives {e.get(key, '<absent>')!r}"
                )
    return (
        f"recorded {len(recorded)} facts {[f.get('type') for f in recorded]}, re-execution gives "
        f"{len(executed)} {[f.get('type') for f in executed]}"
    )
