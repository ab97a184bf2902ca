"""notifications: what each user is told — orders filled, cancelled, rejected or expired,
deposits credited, withdrawals completed or failed.

Every notification is recorded, whatever the user's preferences: preferences are settings that
the reads apply (``queries.notifications``), so this table stays a pure function of the log and
a rebuild gives it back identically. Ids count 1, 2, 3… in log order (the counter is saved with
the tracking position).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from projections.base import Appends, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

KINDS = (
    "order_filled", "order_cancelled", "order_rejected", "order_expired", "deposit_credited",
    "withdrawal_completed", "withdrawal_failed",
)
CLOSED = {"filled": "order_filled", "cancelled": "order_cancelled", "expired": "order_expired"}
# ``json.dumps(data, sort_keys=True, separators=(",", ":"))`` without building an encoder for each
# of the ~3 notifications in 4 outcomes (the same encoder, so the same text)
_BODY = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class Notifications(Projection):
    name = "notifications"
    rebuild_cost = 5
    interest = words("OrderClosed", "OrderRejected", "Deposited", "WithdrawalCompleted", "WithdrawalFailed")
    tables = {"notifications": ("notification_id",)}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(
            self.t["notifications"], ("notification_id", "user_id", "kind", "data", "time", "position")
        )
        self.last_id = 0

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.last_id = int(state.get("last_id", 0))

    def dump_state(self) -> dict[str, Any]:
        return {**super().dump_state(), "last_id": self.last_id}

    def _notify(self, o: DecodedOutcome, user_id: Any, kind: str, data: dict[str, Any]) -> None:
        if not isinstance(user_id, str):
            return  # a request without a known user: nobody to tell
        self.last_id += 1
        self.state_changed = True
        body = _BODY(data)
        self.rows.add(self.last_id, user_id, kind, body, o.time, o.position)

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            kind = f["type"]
            if kind == "OrderClosed":
                self._notify(o, f["user_id"], CLOSED[f["status"]],
                             {"order_id": f["order_id"], "market": f["market"],
                              "status": f["status"], "reason": f["reason"]})
            elif kind == "OrderRejected":
                self._notify(o, f["user_id"], "order_rejected",
                             {"order_id": f["order_id"], "client_order_id": f["client_order_id"],
                              "market": f["market"], "reason": f["reason"],
                              "message": f["message"]})
            elif kind == "Deposited":
                self._notify(o, f["user_id"], "deposit_credited",
                             {"deposit_id": f["deposit_id"], "asset": f["asset"],
                              "amount": self.catalog.units(f["asset"], f["amount"]),
                              "reference": f["reference"]})
            elif kind in ("WithdrawalCompleted", "WithdrawalFailed"):
                self._notify(o, f["user_id"],
                             "withdrawal_completed" if kind == "WithdrawalCompleted" else "withdrawal_failed",
                             {"withdrawal_id": f["withdrawal_id"], "asset": f["asset"],
                              "amount": self.catalog.units(f["asset"], f["amount"])})
            else:
                self.listing(f)

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
