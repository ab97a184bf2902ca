"""withdrawals: each withdrawal's asset, amount and status.

Status: ``pending`` (WithdrawalRequested: the amount is held) → ``completed`` | ``failed``; a
refused ``RequestWithdrawal`` is ``rejected`` under its request id (= the withdrawal id), with
the asset and amount of the request as sent and the reject code in ``reason``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from projections.base import Keyed, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "withdrawal_id", "user_id", "asset", "amount", "amount_str", "reference", "status", "reason",
    "message", "created_at", "updated_at", "created_position", "position",
)
ENDED = {"WithdrawalCompleted": "completed", "WithdrawalFailed": "failed"}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class Withdrawals(Projection):
    name = "withdrawals"
    rebuild_cost = 1
    interest = words("WithdrawalRequested", "WithdrawalCompleted", "WithdrawalFailed", "RequestWithdrawal")
    tables = {"withdrawals": ("withdrawal_id",)}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Keyed(self.t["withdrawals"], ("withdrawal_id",), COLUMNS, ("amount",))

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        if self.rows.in_memory:
            return
        for o in events:
            for f in o.facts:
                if f["type"] in ENDED:
                    self.rows.want((f["withdrawal_id"],))
        self.rows.load(tx)

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            kind = f["type"]
            if kind == "WithdrawalRequested":
                self.rows.put(
                    {
                        "withdrawal_id": f["withdrawal_id"], "user_id": f["user_id"],
                        "asset": f["asset"], "amount": f["amount"],
                        "amount_str": self.catalog.units(f["asset"], f["amount"]),
                        "reference": f["reference"], "status": "pending", "reason": None,
                        "message": None, "created_at": o.time, "updated_at": o.time,
                        "created_position": o.position, "position": o.position,
                    }
                )
            elif kind in ENDED:
                row = self.rows.get((f["withdrawal_id"],))
                if row is None:
                    raise LookupError(f"withdrawal {f['withdrawal_id']} was never requested")
                self.rows.put(
                    {**row, "status": ENDED[kind], "updated_at": o.time, "position": o.position}
                )
            elif kind == "RequestRejected" and o.command == "RequestWithdrawal":
                cmd = (self.lookup(o.request_id) if self.lookup else None) or {}
                self.rows.put(
                    {
                        "withdrawal_id": o.request_id, "user_id": o.actor,
                        "asset": _text(cmd.get("asset")), "amount": None,
                        "amount_str": _text(cmd.get("amount")),
                        "reference": _text(cmd.get("reference")), "status": "rejected",
                        "reason": f["reason"], "message": f["message"], "created_at": o.time,
                        "updated_at": o.time, "created_position": o.position,
                        "position": o.position,
                    }
                )
            else:
                self.listing(f)

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
