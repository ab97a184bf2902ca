"""The event index: where each event is, and what the engine decided for each request.

Two projections, one per log: ``request_index`` (requests log: request id = event id →
position) and ``outcome_index`` (exchange log: request id → the outcome's position, its event id
``uuid5(request id, "outcome")`` and a small summary). The api answers ``GET /v1/events/{id}``
and ``?wait=true`` from them without folding the log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.exchange import RequestRecord
from projections.base import Appends, Projection, RequestLookup, outcome_event_id
from projections.outcomes import DecodedOutcome
from projections.store import Tx

REJECTIONS = ("OrderRejected", "AmendRejected", "CancelRejected", "RequestRejected")


class OutcomeIndex(Projection):
    name = "outcome_index"
    rebuild_cost = 7
    tables = {"outcome_index": ("request_id",)}

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(
            self.t["outcome_index"],
            ("request_id", "event_id", "position", "seq", "request_position", "actor", "command",
             "status", "reason", "message", "facts", "time"),
        )
        self._types: dict[tuple[Any, ...], str] = {}

    def apply(self, o: DecodedOutcome) -> None:
        first = o.facts[0] if o.facts else None
        rejection = first if first is not None and first["type"] in REJECTIONS else None
        rejected = rejection is not None
        self.rows.add(
            o.request_id, outcome_event_id(o.request_id), o.position, o.seq, o.request_position,
            o.actor, o.command, "rejected" if rejected else "accepted",
            rejection["reason"] if rejection else None, rejection["message"] if rejection else None,
            self._types_json(o.facts), o.time,
        )

    def _types_json(self, facts: list[dict[str, Any]]) -> str:
        """The JSON list of the facts' types (a few dozen lists in all: remembered)."""
        types = tuple(f["type"] for f in facts)
        out = self._types.get(types)
        if out is None:
            if len(self._types) >= 10_000:
                self._types.clear()
            out = self._types[types] = json.dumps(list(types), separators=(",", ":"))
        return out

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)


class RequestIndex(Projection):
    name = "request_index"
    rebuild_cost = 10  # with reading its log, which no other projection reads
    source = "requests"
    tables = {"request_index": ("event_id",)}

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(self.t["request_index"], ("event_id", "position", "actor", "command", "time"))

    def apply(self, r: RequestRecord) -> None:
        name = r.command.get("command")
        self.rows.add(r.request_id, r.position, r.actor, name if isinstance(name, str) else None, r.time)

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
