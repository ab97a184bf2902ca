"""ledger: every posting of every fact, per account — what ``GET /v1/ledger`` lists.

Invariant: the sum of an account's rows per asset equals its balance; the postings of one fact
sum to zero per asset. ``kind`` is the fact's type in snake case, ``ref`` its subject's id.
"""

from __future__ import annotations

from collections.abc import Mapping

from projections.base import (
    Appends,
    Memo,
    Projection,
    RequestLookup,
    outcome_event_id,
    snake,
    units_memo,
    words,
)
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "position", "fact_index", "account", "asset", "kind", "ref", "event_id", "available_delta",
    "frozen_delta", "available_delta_str", "frozen_delta_str", "time",
)
REF_FIELDS = ("order_id", "trade_id", "deposit_id", "withdrawal_id", "transfer_id")


class Ledger(Projection):
    name = "ledger"
    rebuild_cost = 17
    interest = words("postings")
    tables = {"ledger": ("position", "fact_index", "account", "asset")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(self.t["ledger"], COLUMNS, ("available_delta", "frozen_delta"))
        self.formats: dict[str, Memo] = {}  # asset → its amounts' strings

    def apply(self, o: DecodedOutcome) -> None:
        event_id: str | None = None
        formats = self.formats
        add = self.rows.pending.append
        position, time = o.position, o.time
        for index, f in enumerate(o.facts):
            postings = f.get("postings")
            if not postings:
                self.listing(f)
                continue
            if event_id is None:
                event_id = outcome_event_id(o.request_id)
            kind = snake(f["type"])
            ref: str | None = None
            for k in REF_FIELDS:  # the first one present (a loop: no generator per fact)
                value = f.get(k)
                if value is not None:
                    ref = str(value)
                    break
            for account, asset, d_available, d_frozen in postings:
                units = formats.get(asset)
                if units is None:
                    units = formats[asset] = units_memo(self.catalog.assets[asset])
                # the memo's strings looked up here, ``units(x)`` only on a miss
                strings = units.memo
                available = strings.get(d_available)
                if available is None:
                    available = units(d_available)
                frozen = strings.get(d_frozen)
                if frozen is None:
                    frozen = units(d_frozen)
                add((
                    position, index, account, asset, kind, ref, event_id, d_available,
                    d_frozen, available, frozen, time,
                ))

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
