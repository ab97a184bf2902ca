"""users: username → user id, password hash and roles; the api's login reads this.

Invariant: one row per ``UserRegistered`` (usernames are unique: the engine refuses a taken one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from projections.base import Appends, Projection, RequestLookup, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx


class Users(Projection):
    name = "users"
    rebuild_cost = 1
    interest = words("UserRegistered", listings=False)
    tables = {"users": ("user_id",)}

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Appends(
            self.t["users"], ("user_id", "username", "password_hash", "roles", "created_at", "position")
        )

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            if f["type"] == "UserRegistered":
                self.rows.add(
                    f["user_id"], f["username"], f["password_hash"], json.dumps(f["roles"]), o.time,
                    o.position,
                )

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
