"""orders: each order's status, fill totals and fees, as the API's order resource shows them.

Status follows docs/events.md: ``rejected`` (OrderRejected) | ``open`` (booked, nothing filled) |
``partially_filled`` (booked, some filled) | ``filled`` · ``cancelled`` · ``expired`` (the
``OrderClosed`` status). ``received`` is not a projection's to know: the api answers it from the
requests log. A rejected order's price and quantity are the request's, as sent (the engine
records only the reason), so its integer columns are null.

Invariants: ``filled`` and ``filled_quote`` are the sums of the order's trades; ``fee`` is the
sum of what those trades charged this side, in the asset the side receives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from domain.amounts import format_units
from projections.base import Keyed, Projection, RequestLookup, Row, units_str, words
from projections.outcomes import DecodedOutcome
from projections.store import Tx

COLUMNS = (
    "order_id", "user_id", "client_order_id", "market", "side", "type", "price", "quantity",
    "quote_quantity", "filled", "filled_quote", "fee", "price_str", "quantity_str",
    "quote_quantity_str", "filled_str", "remaining_str", "filled_quote_str", "average_price_str",
    "fee_str", "fee_asset", "time_in_force", "post_only", "self_trade_prevention", "status",
    "reject_reason", "reject_message", "created_at", "updated_at", "created_position", "position",
)
BIG = ("price", "quantity", "quote_quantity", "filled", "filled_quote", "fee")
OPEN = ("open", "partially_filled")
TOUCHING = ("TradeExecuted", "OrderBooked", "OrderAmended", "OrderClosed")
SIDES = (("maker_order_id", "maker_fee"), ("taker_order_id", "taker_fee"))  # a trade's two orders


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def average_price(filled_quote: int, filled_lots: int, lot_size: str, quote_precision: int) -> str:
    """Filled quote ÷ filled base, rounded half-even to the quote asset's precision."""
    with localcontext() as ctx:
        ctx.prec = 120
        quote = Decimal(filled_quote).scaleb(-quote_precision)
        base = Decimal(filled_lots) * Decimal(lot_size)
        value = (quote / base).quantize(Decimal(1).scaleb(-quote_precision), ROUND_HALF_EVEN)
    return format_units(int(value.scaleb(quote_precision)), quote_precision)


_LOTS: dict[str, tuple[int, int]] = {}


def average_units(filled_quote: int, filled_lots: int, lot_size: str) -> int:
    """``average_price`` in quote units, by integer division: filled quote units × 10^d ÷
    (filled lots × the lot's digits, ``lot_size`` = digits × 10^-d), rounded half-even.

    Exact at any size; ``average_price`` (``Decimal``) gives the same string while the result
    has at most 27 digits (a test compares them) and rounds to 28 significant digits past that."""
    lot = _LOTS.get(lot_size)
    if lot is None:
        sign, digits, exponent = Decimal(lot_size).as_tuple()
        assert isinstance(exponent, int) and not sign
        number = int("".join(map(str, digits)))
        lot = _LOTS[lot_size] = (number * 10 ** max(exponent, 0), 10 ** max(-exponent, 0))
    number, scale = lot
    divisor = filled_lots * number
    q, r = divmod(filled_quote * scale, divisor)
    if 2 * r > divisor or (2 * r == divisor and q & 1):
        q += 1
    return q


class Orders(Projection):
    name = "orders"
    rebuild_cost = 19
    interest = words(
        "OrderAccepted", "OrderRejected", "TradeExecuted", "OrderBooked", "OrderAmended", "OrderClosed"
    )
    tables = {"orders": ("order_id",)}
    uses_catalog = True

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        super().__init__(names, lookup)
        self.rows = Keyed(self.t["orders"], ("order_id",), COLUMNS, BIG, render=self.render)

    def begin(self, tx: Tx, events: Sequence[DecodedOutcome]) -> None:
        if self.rows.in_memory:
            return
        for o in events:
            for f in o.facts:
                kind = f["type"]
                if kind == "TradeExecuted":
                    self.rows.want((f["maker_order_id"],))
                    self.rows.want((f["taker_order_id"],))
                elif kind in TOUCHING:
                    self.rows.want((f["order_id"],))
        self.rows.load(tx)

    def _order(self, order_id: str) -> Row:
        row = self.rows.get((order_id,))
        if row is None:
            raise LookupError(f"order {order_id} has no accepted row")
        return row

    def apply(self, o: DecodedOutcome) -> None:
        for f in o.facts:
            kind = f["type"]
            if kind == "OrderAccepted":
                self._accepted(o, f)
            elif kind == "OrderRejected":
                self._rejected(o, f)
            elif kind == "TradeExecuted":
                for order_key, fee_key in SIDES:
                    row = self._order(f[order_key])
                    row["filled"] += f["quantity"]
                    row["filled_quote"] += f["quote_amount"]
                    row["fee"] += f[fee_key]
                    if row["status"] == "open":
                        row["status"] = "partially_filled"
                    self._touch(row, o)
            elif kind == "OrderBooked":
                row = self._order(f["order_id"])
                row["status"] = "partially_filled" if row["filled"] else "open"
                self._touch(row, o)
            elif kind == "OrderAmended":
                row = self._order(f["order_id"])
                row["price"], row["quantity"] = f["price"], f["quantity"]
                self._touch(row, o)
            elif kind == "OrderClosed":
                row = self._order(f["order_id"])
                row["status"] = f["status"]
                self._touch(row, o)
            else:
                self.listing(f)

    def _touch(self, row: Row, o: DecodedOutcome) -> None:
        row["updated_at"], row["position"] = o.time, o.position
        self.rows.put(row, (row["order_id"],))

    def _accepted(self, o: DecodedOutcome, f: Mapping[str, Any]) -> None:
        market = self.catalog.markets[f["market"]]
        # every column at once (not ``dict.fromkeys`` then ``update``): most outcomes accept one
        row: Row = {
            "order_id": f["order_id"], "user_id": f["user_id"],
            "client_order_id": f["client_order_id"], "market": f["market"], "side": f["side"],
            "type": f["order_type"], "price": f["price"], "quantity": f["quantity"],
            "quote_quantity": f["quote_quantity"], "filled": 0, "filled_quote": 0, "fee": 0,
            "price_str": None, "quantity_str": None, "quote_quantity_str": None,
            "filled_str": None, "remaining_str": None, "filled_quote_str": None,
            "average_price_str": None, "fee_str": None,
            "fee_asset": market.base if f["side"] == "buy" else market.quote,
            "time_in_force": f["time_in_force"], "post_only": bool(f["post_only"]),
            "self_trade_prevention": f["self_trade_prevention"], "status": "open",
            "reject_reason": None, "reject_message": None, "created_at": o.time,
            "updated_at": o.time, "created_position": o.position, "position": o.position,
        }
        self.rows.put(row)

    def _rejected(self, o: DecodedOutcome, f: Mapping[str, Any]) -> None:
        cmd = (self.lookup(o.request_id) if self.lookup else None) or {}
        market = self.catalog.markets.get(f["market"]) if isinstance(f["market"], str) else None
        side = f["side"]
        post_only = cmd.get("post_only")
        row: Row = dict.fromkeys(COLUMNS)
        row.update(
            order_id=f["order_id"], user_id=f["user_id"], client_order_id=f["client_order_id"],
            market=_text(f["market"]), side=_text(side), type=_text(f["order_type"]), filled=0,
            filled_quote=0, fee=0, price_str=_text(cmd.get("price")),
            quantity_str=_text(cmd.get("quantity")), quote_quantity_str=_text(cmd.get("quote_quantity")),
            fee_asset=(market.base if side == "buy" else market.quote) if market else None,
            time_in_force=_text(cmd.get("time_in_force")),
            post_only=post_only if isinstance(post_only, bool) else None,
            self_trade_prevention=_text(cmd.get("self_trade_prevention")), status="rejected",
            reject_reason=f["reason"], reject_message=f["message"], created_at=o.time,
            updated_at=o.time, created_position=o.position, position=o.position,
        )
        self.rows.put(row)

    def render(self, row: Row) -> None:
        formats = self.catalog.formats.get(row["market"]) if row["market"] else None
        if formats is None:  # rejected for an unknown market: nothing to render with
            row["filled_str"] = row["filled_quote_str"] = row["fee_str"] = "0"
            return
        market = formats.market
        quote_p = market.quote_precision
        filled = row["filled"]
        row["filled_str"] = formats.quantity(filled)
        row["filled_quote_str"] = units_str(row["filled_quote"], quote_p)
        row["fee_str"] = units_str(
            row["fee"], market.base_precision if row["fee_asset"] == market.base else quote_p)
        if row["status"] == "rejected":
            return
        row["price_str"] = None if row["price"] is None else formats.price(row["price"])
        quantity = row["quantity"]
        row["quantity_str"] = None if quantity is None else formats.quantity(quantity)
        qq = row["quote_quantity"]
        row["quote_quantity_str"] = None if qq is None else units_str(qq, quote_p)
        if quantity is None:
            row["remaining_str"] = None
        elif row["status"] in OPEN:
            row["remaining_str"] = formats.quantity(quantity - filled)
        else:
            row["remaining_str"] = formats.quantity(0)
        row["average_price_str"] = (
            units_str(average_units(row["filled_quote"], filled, market.lot_size), quote_p)
            if filled
            else None
        )

    def flush(self, tx: Tx) -> None:
        self.rows.flush(tx)
