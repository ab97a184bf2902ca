"""balances: available and frozen per account and asset, folded from every fact's postings.

Invariant: each row is the sum of all postings of its (account, asset) up to the tracking
position, so summing a column over all accounts of one asset gives zero (double entry).
System accounts (``@custody``, ``@fees``) have rows too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.log import RecordedOutcome
from projections.base import Keyed, Projection, RequestLookup
from projections.store import Tx

COLUMNS = (
    "account", "asset", "available", "frozen", "available_str", "frozen_str", "total_str",
    "updated_at", "position",
)


class Balances(Projection):
    name = "balances"
    tables = {"balances": ("account", "asset")}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Keyed(self.t["balances"], ("account", "asset"), COLUMNS, ("available", "frozen"))

    def begin(self, tx: Tx, events: Sequence[RecordedOutcome]) -> None:
        for o in events:
            for f in o.facts:
                for account, asset, _a, _f in f.get("postings", ()):
                    self.rows.want((account, asset))
        self.rows.load(tx)

    def apply(self, o: RecordedOutcome) -> None:
        touched: dict[tuple[str, str], list[int]] = {}
        for f in o.facts:
            self.listing(f)
            for account, asset, d_available, d_frozen in f.get("postings", ()):
                key = (account, asset)
                cur = touched.get(key)
                if cur is None:
                    row = self.rows.get(key)
                    cur = [row["available"], row["frozen"]] if row else [0, 0]
                    touched[key] = cur
                cur[0] += d_available
                cur[1] += d_frozen
        units = self.catalog.units
        for (account, asset), (available, frozen) in touched.items():
            self.rows.put(
                {
                    "account": account,
                    "asset": asset,
                    "available": available,
                    "frozen": frozen,
                    "available_str": units(asset, available),
                    "frozen_str": units(asset, frozen),
                    "total_str": units(asset, available + frozen),
                    "updated_at": o.time,
                    "position": o.position,
                }
            )

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
