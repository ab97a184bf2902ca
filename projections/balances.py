"""balances: available and frozen per account and asset, folded from every fact's postings.

Invariant: each row is the sum of all postings of its (account, asset) up to the tracking
position, so summing a column over all accounts of one asset gives zero (double entry).
System accounts (``@custody``, ``@fees``) have rows too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from projections.base import LISTINGS, Keyed, Projection, RequestLookup, Row, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "account", "asset", "available", "frozen", "available_str", "frozen_str", "total_str",
    "updated_at", "position",
)


class Balances(Projection):
    name = "balances"
    rebuild_cost = 4
    interest = words("postings")
    tables = {"balances": ("account", "asset")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Keyed(self.t["balances"], ("account", "asset"), COLUMNS, ("available", "frozen"),
                          render=self.render)

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        if self.rows.in_memory:
            return
        for o in events:
            for f in o.facts:
                for account, asset, _a, _f in f.get("postings", ()):
                    self.rows.want((account, asset))
        self.rows.load(tx)

    def apply(self, o: DecodedOutcome) -> None:
        rows = self.rows
        get, put = rows.get, rows.put
        time, position = o.time, o.position
        for f in o.facts:
            if f["type"] in LISTINGS:
                self.listing(f)
            for account, asset, d_available, d_frozen in f.get("postings", ()):
                key = (account, asset)
                row = get(key)
                if row is None:
                    row = {"account": account, "asset": asset, "available": 0, "frozen": 0}
                row["available"] += d_available
                row["frozen"] += d_frozen
                row["updated_at"], row["position"] = time, position
                put(row, key)

    def render(self, row: Row) -> None:
        units = self.catalog.units
        asset = row["asset"]
        row["available_str"] = units(asset, row["available"])
        row["frozen_str"] = units(asset, row["frozen"])
        row["total_str"] = units(asset, row["available"] + row["frozen"])

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
