"""The ``user`` WebSocket channel's content: exchange-log outcomes folded for the users followed.

For each outcome (log position ``p``) that touches a followed user, in log order, the user gets:

- ``fill``: each side of each trade of theirs (one per ``TradeExecuted`` side);
- ``order``: every order of theirs that ``p`` changed, as the order resource after ``p`` (status
  and fill totals) — one message per order per outcome, so every status change is seen, in order;
- ``balance``: every asset that ``p`` moved: the deltas and the balance after ``p``.

Notifications come from the notifications read model (``api.streams`` merges them in by position).

Exactness without folding the whole log: an order the stream sees accepted starts from zero; an
order placed before the stream followed its user (a "pre-existing" one) starts from its read-model
row with fill totals summed from its fills strictly before ``p`` (fill rows never change, so any
later read of them is exact). A rejected order is sent as its read-model row (final from the
start). Balances start from the balances read model at the subscription (its position ``Q``);
outcomes at or before ``Q`` are not folded into them. Rendering is the orders projection's
(``projections.orders.average_price``, the market's tick and lot), so the last ``order`` message
of an order equals ``GET /v1/orders/{id}`` — the e2e tests check it.

Not thread-safe: ``api.streams.Hub`` calls it only while holding its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from domain.amounts import format_units, to_units
from domain.markets import Market
from engine.log import RecordedOutcome
from projections import queries as q
from projections.base import Catalog
from projections.orders import OPEN, average_price

Message = dict[str, Any]
Out = dict[str, list[tuple[int, Message]]]  # user id → [(position, message)]


class UserStream:
    """The order and balance state of followed users, advanced outcome by outcome."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.catalog = Catalog()
        self.catalog_loaded = False
        # user id → position of the balances base (outcomes at or before it are in the base)
        self.base: dict[str, int] = {}
        self.balances: dict[str, dict[str, list[int]]] = {}
        self.orders: dict[str, dict[str, Any]] = {}

    # -- followed users -------------------------------------------------------------------

    def follow(self, user_id: str) -> dict[str, Any]:
        """Start (or refresh) following a user; returns the balances snapshot the client gets."""
        self.ensure_catalog()
        snap: dict[str, Any] = q.balances(self.store, user_id)
        if user_id not in self.base:
            self.base[user_id] = int(snap["position"])
            held: dict[str, list[int]] = {}
            for b in snap["balances"]:
                precision = self.precision(b["asset"])
                held[b["asset"]] = [to_units(b["available"], precision), to_units(b["frozen"], precision)]
            self.balances[user_id] = held
        return snap

    def forget(self, user_id: str) -> None:
        self.base.pop(user_id, None)
        self.balances.pop(user_id, None)
        for oid in [oid for oid, o in self.orders.items() if o["user_id"] == user_id]:
            del self.orders[oid]

    def ensure_catalog(self) -> None:
        if not self.catalog_loaded:
            self.reload_catalog()

    def reload_catalog(self) -> None:
        assets = {a["symbol"]: a["precision"] for a in q.assets(self.store)}
        catalog = Catalog()
        catalog.load({"assets": assets, "markets": list(q.markets(self.store))})
        self.catalog, self.catalog_loaded = catalog, True

    # Listings never change once made; one listed while nobody was followed (its fact was not
    # folded) is read from the read model on first use.

    def market(self, symbol: str) -> Market:
        found = self.catalog.markets.get(symbol)
        if found is None:
            self.reload_catalog()
            found = self.catalog.markets[symbol]
        return found

    def precision(self, asset: str) -> int:
        if asset not in self.catalog.assets:
            self.reload_catalog()
        return self.catalog.assets[asset]

    def units(self, asset: str, units: int) -> str:
        return format_units(units, self.precision(asset))

    # -- the fold -------------------------------------------------------------------------

    def fold(self, outcomes: Sequence[RecordedOutcome]) -> Out:
        """The messages of these outcomes for the followed users, per user, in log order."""
        out: Out = {}
        for o in outcomes:
            self._outcome(o, out)
        return out

    def _outcome(self, o: RecordedOutcome, out: Out) -> None:
        followed = self.base
        touched: dict[str, None] = {}  # order ids in first-touch order
        rejected: list[tuple[str, str]] = []
        moves: dict[tuple[str, str], list[int]] = {}
        for f in o.facts:
            kind = f["type"]
            if kind in ("AssetListed", "MarketListed"):
                try:
                    self.catalog.apply(f)
                except KeyError:  # its asset was listed while nobody was followed
                    self.reload_catalog()
                continue
            for account, asset, d_avail, d_frozen in f.get("postings", ()):
                if account in followed:
                    move = moves.setdefault((account, asset), [0, 0])
                    move[0] += d_avail
                    move[1] += d_frozen
            if kind == "OrderAccepted":
                if f["user_id"] in followed:
                    self.orders[f["order_id"]] = self._accepted(o, f)
                    touched[f["order_id"]] = None
            elif kind == "OrderRejected":
                if f["user_id"] in followed:
                    rejected.append((f["user_id"], f["order_id"]))
            elif kind == "TradeExecuted":
                self._trade(o, f, touched, out)
            elif kind in ("OrderBooked", "OrderAmended", "OrderClosed"):
                order = self._order(f["order_id"], f.get("user_id"), o.position)
                if order is None:
                    continue
                if kind == "OrderBooked":
                    order["status"] = "partially_filled" if order["filled"] else "open"
                elif kind == "OrderAmended":
                    order["price"], order["quantity"] = f["price"], f["quantity"]
                else:
                    order["status"] = f["status"]
                touched[f["order_id"]] = None
        for oid in touched:
            order = self.orders[oid]
            order["updated_at"], order["position"] = o.time, o.position
            out.setdefault(order["user_id"], []).append(
                (o.position, envelope("order", o.position, self._order_resource(order))))
            if order["status"] not in OPEN:
                del self.orders[oid]
        for user_id, oid in rejected:
            row = q.order(self.store, oid)
            if row is not None:
                out.setdefault(user_id, []).append(
                    (o.position, envelope("order", o.position, order_resource(row))))
        for (user_id, asset), (d_avail, d_frozen) in moves.items():
            if o.position <= self.base[user_id]:
                continue
            held = self.balances[user_id].setdefault(asset, [0, 0])
            held[0] += d_avail
            held[1] += d_frozen
            out.setdefault(user_id, []).append((o.position, envelope(
                "balance", o.position, self._balance(asset, held, d_avail, d_frozen))))

    def _trade(self, o: RecordedOutcome, f: Mapping[str, Any], touched: dict[str, None], out: Out) -> None:
        market = self.market(f["market"])
        taker_side = f["taker_side"]
        for role, side in (("maker", "sell" if taker_side == "buy" else "buy"), ("taker", taker_side)):
            user_id = f[f"{role}_user_id"]
            if user_id not in self.base:
                continue
            oid = f[f"{role}_order_id"]
            order = self._order(oid, user_id, o.position)
            if order is not None:
                order["filled"] += f["quantity"]
                order["filled_quote"] += f["quote_amount"]
                order["fee"] += f[f"{role}_fee"]
                if order["status"] == "open":
                    order["status"] = "partially_filled"
                touched[oid] = None
            fee_asset = f[f"{role}_fee_asset"]
            fill = {  # as GET /v1/fills shows it
                "trade_id": f["trade_id"], "order_id": oid, "user_id": user_id,
                "market": f["market"], "side": side, "price": market.format_price(f["price"]),
                "quantity": market.format_quantity(f["quantity"]),
                "quote_quantity": self.units(market.quote, f["quote_amount"]),
                "fee": self.units(fee_asset, f[f"{role}_fee"]), "fee_asset": fee_asset,
                "liquidity": role, "time": o.time, "position": o.position,
            }
            out.setdefault(user_id, []).append((o.position, envelope("fill", o.position, fill)))

    def _order(self, order_id: str, user_id: Any, position: int) -> dict[str, Any] | None:
        """The followed order's state before ``position``, loading a pre-existing one."""
        order = self.orders.get(order_id)
        if order is not None:
            return order
        # OrderBooked names no user: it follows its order's OrderAccepted or OrderAmended in the
        # same outcome, which put a followed order in the cache already.
        if user_id not in self.base:
            return None
        row = q.order(self.store, order_id)
        if row is None or row.get("user_id") not in self.base:
            return None
        order = self._pre_existing(row, position)
        self.orders[order_id] = order
        return order

    def _pre_existing(self, row: Mapping[str, Any], position: int) -> dict[str, Any]:
        """An order accepted before the stream followed it: totals from its fills before ``position``."""
        market = self.market(row["market"])
        filled = filled_quote = fee = 0
        cursor = None
        while True:
            page = q.fills(self.store, row["user_id"], order_id=row["order_id"], limit=1000, cursor=cursor)
            for fill in page["data"]:
                if fill["position"] >= position:
                    continue
                filled += market.quantity_lots(fill["quantity"])
                filled_quote += to_units(fill["quote_quantity"], market.quote_precision)
                fee += to_units(fill["fee"], self.precision(fill["fee_asset"]))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return {
            "order_id": row["order_id"], "user_id": row["user_id"],
            "client_order_id": row.get("client_order_id"), "market": row["market"], "side": row["side"],
            "type": row["type"],
            "price": None if row.get("price") is None else market.price_ticks(row["price"]),
            "quantity": None if row.get("quantity") is None else market.quantity_lots(row["quantity"]),
            "quote_quantity": row.get("quote_quantity"), "filled": filled, "filled_quote": filled_quote,
            "fee": fee, "fee_asset": row.get("fee_asset"), "time_in_force": row.get("time_in_force"),
            "post_only": bool(row.get("post_only")),
            "self_trade_prevention": row.get("self_trade_prevention"),
            "status": "partially_filled" if filled else "open", "created_at": row["created_at"],
            "updated_at": row["updated_at"], "position": row["position"],
        }

    def _accepted(self, o: RecordedOutcome, f: Mapping[str, Any]) -> dict[str, Any]:
        market = self.market(f["market"])
        qq = f["quote_quantity"]
        return {
            "order_id": f["order_id"], "user_id": f["user_id"], "client_order_id": f["client_order_id"],
            "market": f["market"], "side": f["side"], "type": f["order_type"], "price": f["price"],
            "quantity": f["quantity"],
            "quote_quantity": None if qq is None else format_units(qq, market.quote_precision),
            "filled": 0, "filled_quote": 0, "fee": 0,
            "fee_asset": market.base if f["side"] == "buy" else market.quote,
            "time_in_force": f["time_in_force"], "post_only": bool(f["post_only"]),
            "self_trade_prevention": f["self_trade_prevention"], "status": "open",
            "created_at": o.time, "updated_at": o.time, "position": o.position,
        }

    def _order_resource(self, order: Mapping[str, Any]) -> Message:
        """The API's order resource (``OrderPublic``) for a followed order's state."""
        market = self.market(order["market"])
        quote_p = market.quote_precision
        fee_p = market.base_precision if order["fee_asset"] == market.base else quote_p
        price, quantity, filled = order["price"], order["quantity"], order["filled"]
        if quantity is None:
            remaining = None
        elif order["status"] in OPEN:
            remaining = market.format_quantity(quantity - filled)
        else:
            remaining = market.format_quantity(0)
        return {
            "order_id": order["order_id"],
            "client_order_id": order["client_order_id"], "market": order["market"],
            "side": order["side"], "type": order["type"],
            "price": None if price is None else market.format_price(price),
            "quantity": None if quantity is None else market.format_quantity(quantity),
            "quote_quantity": order["quote_quantity"],
            "filled_quantity": market.format_quantity(filled),
            "remaining_quantity": remaining,
            "filled_quote": format_units(order["filled_quote"], quote_p),
            "average_price": average_price(order["filled_quote"], filled, market.lot_size, quote_p)
            if filled else None,
            "fee": format_units(order["fee"], fee_p), "fee_asset": order["fee_asset"],
            "time_in_force": order["time_in_force"], "post_only": order["post_only"],
            "self_trade_prevention": order["self_trade_prevention"],
            "status": order["status"], "reject_reason": None, "reject_message": None,
            "created_at": order["created_at"], "updated_at": order["updated_at"],
            "position": order["position"],
        }

    def _balance(self, asset: str, held: Sequence[int], d_avail: int, d_frozen: int) -> Message:
        units = self.units
        return {
            "asset": asset,
            "available": units(asset, held[0]), "frozen": units(asset, held[1]),
            "total": units(asset, held[0] + held[1]),
            "available_delta": units(asset, d_avail), "frozen_delta": units(asset, d_frozen),
        }


def order_resource(row: Mapping[str, Any]) -> Message:
    """An order read-model row as the API's order resource (as ``GET /v1/orders/{id}``: no user_id)."""
    return {k: v for k, v in row.items() if k != "user_id"}


def envelope(kind: str, position: int, body: Message) -> Message:
    """``{"type": kind, "channel": "user", "position": p, kind: body}``."""
    return {"type": kind, "channel": "user", "position": position, kind: body}


def user_ids(outcomes: Iterable[RecordedOutcome]) -> set[str]:
    """Every user an outcome's facts name (to skip a page that concerns nobody followed)."""
    found: set[str] = set()
    for o in outcomes:
        for f in o.facts:
            for key in ("user_id", "maker_user_id", "taker_user_id"):
                value = f.get(key)
                if isinstance(value, str):
                    found.add(value)
            for account, *_ in f.get("postings", ()):
                found.add(account)
    return found
