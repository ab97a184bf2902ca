"""Outcomes as the runners hand them to the projections: decoded on first use, and filtered.

A page of the exchange log is read undecoded (``projections.pages``); a ``LazyOutcome`` wraps
each stored row and decodes it (``decode_outcome``: what ``engine.log.Logs.decode_outcome``
gives, field for field, in a ``DecodedOutcome``) the first time a projection needs it. A
projection that cares about a few fact types (``Projection.interest``) skips the outcomes that
name none of them, without their being decoded for it; its tracking position still moves past
them.

This is the part of the runners paid per outcome and per process (a parallel rebuild reads and
filters the log in every process), so it is compiled with the folds (``setup.py``). Its names
for the interest filters are the same whether read from the stored bytes or from the decoded
facts (a test), and a signature of fact types met before is not looked at twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from engine.log import Logs, Outcome, RecordedOutcome, timestamp_only
from projections.pages import StoredRow, notification_at

_TYPES = re.compile(rb'"type"\s*:\s*"(\w+)"')
_COMMAND = re.compile(rb'"command"\s*:\s*"(\w+)"')


class DecodedOutcome:
    """An outcome as the folds read it: the fields of ``engine.log.RecordedOutcome``, with the
    same values. A class compiled with the folds (``setup.py``): they read its fields without a
    lookup by name, and it is built without the ``object.__setattr__`` per field of a frozen
    dataclass (~1 µs an outcome, in every process of a parallel rebuild)."""

    def __init__(
        self, position: int, seq: int, time: str, request_id: str, request_position: int,
        actor: str | None, command: str | None, facts: list[dict[str, Any]], prev_hash: str,
        hash: str,
    ) -> None:
        self.position = position
        self.seq = seq
        self.time = time
        self.request_id = request_id
        self.request_position = request_position
        self.actor = actor
        self.command = command
        self.facts = facts
        self.prev_hash = prev_hash
        self.hash = hash

    def fields(self) -> tuple[Any, ...]:
        """Its values in ``RecordedOutcome``'s order (what the tests compare)."""
        return (self.position, self.seq, self.time, self.request_id, self.request_position,
                self.actor, self.command, self.facts, self.prev_hash, self.hash)


def _copied(o: RecordedOutcome) -> DecodedOutcome:
    return DecodedOutcome(o.position, o.seq, o.time, o.request_id, o.request_position, o.actor,
                          o.command, o.facts, o.prev_hash, o.hash)


def decode_outcome(logs: Logs, row: Any) -> DecodedOutcome:
    """An outcome as ``logs.decode_outcome`` gives it, from a ``StoredRow`` or a notification.

    A row whose timestamp is its only transcoded value is decoded by ``Logs``' own rule
    (``engine.log.timestamp_only``) and its fields taken as ``engine.log.recorded_outcome`` takes
    them; any other is read again through the library and decoded by ``Logs`` itself."""
    if isinstance(row, StoredRow):
        data = timestamp_only(row.state) if row.topic == Outcome.TOPIC else None
        if data is not None:
            return DecodedOutcome(
                row.id, row.originator_version, data["timestamp"].isoformat(), data["request_id"],
                data["request_position"], data["actor"], data["command"], data["facts"],
                data["prev_hash"], data["hash"],
            )
        row = notification_at(logs.exchange, row.id)
    return _copied(logs.decode_outcome(row))


# (fact types, command, which facts have postings) → the names the interest filters look at: a
# log repeats a few dozen such signatures (60 in the bench's 100,000 outcomes)
_SIGNATURES: dict[tuple[Any, ...], frozenset[bytes]] = {}
_SIGNATURES_LIMIT = 10_000


def _names_of(facts: list[Any], command: Any) -> frozenset[bytes] | None:
    """The names of decoded facts (None if a fact is not an object with a string type)."""
    kinds: list[str] = []
    postings = False
    for f in facts:
        if not isinstance(f, dict):
            return None
        t = f.get("type")
        if not isinstance(t, str):
            return None
        kinds.append(t)
        if "postings" in f:
            postings = True
    key = (tuple(kinds), command if isinstance(command, str) else None, postings)
    found = _SIGNATURES.get(key)
    if found is None:
        names = {t.encode() for t in kinds}
        if isinstance(command, str):
            names.add(command.encode())
        if postings:
            names.add(b"postings")
        found = frozenset(names)
        if len(_SIGNATURES) >= _SIGNATURES_LIMIT:
            _SIGNATURES.clear()
        _SIGNATURES[key] = found
    return found


class LazyOutcome:
    """An outcome read from the exchange log, decoded on first use (``decoded()``)."""

    def __init__(self, logs: Logs, stored: Any) -> None:
        """``stored``: a ``projections.pages.StoredRow`` or the library's notification."""
        self.position: int = stored.id
        self._n: Any = stored
        self._logs = logs
        self._decoded: DecodedOutcome | None = None
        self._names: frozenset[bytes] | None = None

    def names(self) -> frozenset[bytes] | None:
        """The fact types and command it names (and ``postings`` if any), read from the stored
        JSON without decoding it; None if the state is not plain JSON (then: decode)."""
        if self._names is None and self._decoded is not None:
            # decoded already (for a projection that reads every outcome): its facts say it
            o = self._decoded
            self._names = _names_of(o.facts, o.command)
        if self._names is None:
            state: bytes = self._n.state
            if not state.startswith(b"{"):
                return None
            types = _TYPES.findall(state)
            if len(types) != state.count(b'"type"'):  # one the expression missed: decode
                return None
            found = {*types, *_COMMAND.findall(state)}
            if b'"postings"' in state:
                found.add(b"postings")
            self._names = frozenset(found)
        return self._names

    def decoded(self) -> DecodedOutcome:
        o = self._decoded
        if o is None:
            o = self._decoded = decode_outcome(self._logs, self._n)
        return o

    @property
    def is_decoded(self) -> bool:
        return self._decoded is not None

    def decode_ahead(self) -> None:
        """Decode now if it decodes; if not, the projection that needs it will try again and
        stop there, as it would have without this (one it does not interest never fails)."""
        if self._decoded is None:
            try:  # noqa: SIM105 - a plain try is cheaper than suppress(), once per outcome
                self._decoded = decode_outcome(self._logs, self._n)
            except Exception:
                pass


def lazy_page(logs: Logs, rows: Sequence[Any]) -> list[Any]:
    """A page of stored outcomes, each wrapped undecoded."""
    return [LazyOutcome(logs, n) for n in rows]


def decode_ahead(page: Sequence[Any]) -> None:
    """``decode_ahead`` every outcome of a page."""
    for e in page:
        if isinstance(e, LazyOutcome):
            e.decode_ahead()


def relevant(events: Sequence[Any], interest: frozenset[bytes] | None) -> list[Any]:
    """The events a projection must apply, decoded (a page's others it only tracks past)."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, LazyOutcome):
            if interest is not None:
                names = e.names()
                if names is not None and interest.isdisjoint(names):
                    continue
            out.append(e.decoded())
        else:
            out.append(e)
    return out


def mostly_decoded(page: Sequence[Any]) -> bool:
    """The followers decoded at least 90 % of this page's outcomes: then the next page is
    decoded first. An outcome's names for the interest filters come from its decoded facts
    (~2 µs) instead of a search of its bytes (~4.6 µs) that nearly every outcome would follow
    with its decoding anyway (~11 µs), as in a rebuild whose group lacks ``outcome_index``,
    which decodes everything first. The names are the same either way (a test)."""
    if not page or not isinstance(page[0], LazyOutcome):
        return False
    decoded = 0
    for e in page:
        if isinstance(e, LazyOutcome) and e.is_decoded:
            decoded += 1
    return decoded * 10 >= len(page) * 9
