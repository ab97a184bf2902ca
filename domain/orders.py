"""An open order: what it asked for, what it has filled, and what it still holds.

Invariant (checked by the engine): a resting limit buy holds ``price × remaining`` in quote
units, a resting limit sell ``remaining`` lots in base units; an order holds nothing once closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

BUY = "buy"
SELL = "sell"


# An order's fields, in the order of its row in a snapshot (``to_state``): stored snapshots are
# read by position, so this order never changes; a new field goes at the end.
FIELDS: Final = (
    "booked",
    "client_order_id",
    "filled",
    "filled_quote",
    "hold",
    "hold_asset",
    "market",
    "order_id",
    "order_type",
    "post_only",
    "price",
    "quantity",
    "quote_quantity",
    "remaining",
    "side",
    "stp",
    "time_in_force",
    "user_id",
)


class Order:
    """Mutable state of one accepted order, changed only by the engine applying facts."""

    __slots__ = FIELDS

    def __init__(
        self,
        order_id: str,
        user_id: str,
        market: str,
        side: str,
        order_type: str,
        price: int | None,
        quantity: int | None,
        quote_quantity: int | None,
        hold: int,
        hold_asset: str,
        time_in_force: str,
        post_only: bool,
        stp: str,
        client_order_id: str | None,
    ) -> None:
        self.order_id = order_id
        self.user_id = user_id
        self.market = market
        self.side = side
        self.order_type = order_type
        self.price = price
        self.quantity = quantity
        self.quote_quantity = quote_quantity
        self.remaining = quantity if quantity is not None else 0
        self.filled = 0
        self.filled_quote = 0
        self.hold = hold
        self.hold_asset = hold_asset
        self.time_in_force = time_in_force
        self.post_only = post_only
        self.stp = stp
        self.client_order_id = client_order_id
        self.booked = False

    def to_state(self) -> list[object]:
        """The order's values in ``FIELDS``' order (a snapshot's row)."""
        return [self.booked, self.client_order_id, self.filled, self.filled_quote, self.hold,
                self.hold_asset, self.market, self.order_id, self.order_type, self.post_only,
                self.price, self.quantity, self.quote_quantity, self.remaining, self.side, self.stp,
                self.time_in_force, self.user_id]

    @classmethod
    def from_state(cls, row: Sequence[Any]) -> Order:
        """The order ``to_state`` gave ``row`` for (values decoded from a snapshot)."""
        (booked, client_order_id, filled, filled_quote, hold, hold_asset, market, order_id, order_type,
         post_only, price, quantity, quote_quantity, remaining, side, stp, time_in_force, user_id) = row
        order = cls(order_id, user_id, market, side, order_type, price, quantity, quote_quantity, hold,
                    hold_asset, time_in_force, post_only, stp, client_order_id)
        order.remaining, order.filled, order.filled_quote = remaining, filled, filled_quote
        order.booked = booked
        return order
