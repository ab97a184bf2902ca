"""The auditor's folds as they stand at a verified engine snapshot, and the check that they agree.

The audit can start at a stored snapshot instead of position 0 (``Audit(start=...)``; the
parallel audit of ``spotex.audit_cli`` cuts the log into segments between snapshots). That is
sound only for a snapshot already proven, and only if what the auditor would hold there equals
what it is seeded with:

- the re-executing engine starts from ``Exchange.from_state``: the snapshot has been compared,
  field for field, with the state re-executed up to its seq (``Reexecution.check_snapshot``);
- the auditor's own ledger and book start from ``ledger_from_state`` / ``book_from_state``, and
  at every snapshot the folds built up to it must equal what those make of the snapshot
  (``fold_differences``; a difference is a ``snapshot_mismatch``).

So a segment that ends clean at a snapshot hands the next one exactly the state a run from
position 0 would have had there, and by induction every segment is proven from position 0.
What the snapshot does not hold (the ids of closed orders, deposits, transfers, the counts per
fact type) is carried between segments by the caller (``known_ids``) or summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from domain.orders import FIELDS
from engine.audit_book import BookCheck, _Order
from engine.audit_ledger import LedgerCheck, _MarketTerms


class _OrderRow:
    """The fields of a stored order row (``Order.to_state``: its values in ``FIELDS``
    order) that the folds read, taken by index: an ``Order`` built per row by ``setattr`` per
    slot cost more than the rest of seeding (a snapshot of the 1M log holds ~10,000 open
    orders, and each segment seeds its folds at its start and again at its end)."""

    __slots__ = ("filled", "hold", "hold_asset", "market", "order_id", "price", "quantity", "side", "user_id")

    def __init__(self, row: list[Any]) -> None:
        if len(row) != len(_SLOTS):
            raise ValueError(f"an order row of {len(row)} fields, not {len(_SLOTS)}")
        self.order_id, self.user_id, self.market = row[_ORDER_ID], row[_USER_ID], row[_MARKET]
        self.side, self.price, self.quantity = row[_SIDE], row[_PRICE], row[_QUANTITY]
        self.filled, self.hold, self.hold_asset = row[_FILLED], row[_HOLD], row[_HOLD_ASSET]


_SLOTS: tuple[str, ...] = FIELDS
_ORDER_ID, _USER_ID, _MARKET, _SIDE, _PRICE, _QUANTITY, _FILLED, _HOLD, _HOLD_ASSET = (
    _SLOTS.index(name)
    for name in ("order_id", "user_id", "market", "side", "price", "quantity", "filled", "hold", "hold_asset")
)


def _orders(state: Mapping[str, Any]) -> list[_OrderRow]:
    return [_OrderRow(list(row)) for row in state["orders"]]


def ledger_from_state(state: Mapping[str, Any], orders: list[_OrderRow] | None = None) -> LedgerCheck:
    """The ledger fold as it stands at a state: balances, holds, keys, listings, last trade id."""
    lc = LedgerCheck()
    for account, asset, available, frozen in state["balances"]:
        lc.balances[(account, asset)] = [available, frozen]
        lc.totals[asset] = lc.totals.get(asset, 0) + available + frozen
    for symbol, precision in state["assets"]:
        lc.precisions[symbol] = precision
    for listing in state["markets"]:
        lc.markets[listing["symbol"]] = _MarketTerms(listing, lc.precisions)
    touched: dict[tuple[str, str], None] = {}
    for order in _orders(state) if orders is None else orders:
        lc._hold(order.order_id, order.user_id, order.hold_asset, order.hold, touched)
        lc.ids.add(order.order_id)
    for wid, user_id, asset, amount, status in state["withdrawals"]:
        lc.ids.add(wid)
        if status == "pending":
            lc._hold("w:" + wid, user_id, asset, amount, touched)
    lc.keys.update(state["keys"])
    lc.last_trade_id = state["next_trade_id"] - 1
    return lc


def book_from_state(state: Mapping[str, Any], orders: list[_OrderRow] | None = None) -> BookCheck:
    """The book model as it stands at a state: open orders, resting ones in priority order."""
    bc = BookCheck()
    for order in _orders(state) if orders is None else orders:
        o = _Order(order.order_id, order.user_id, order.market, order.side, order.price, order.quantity)
        o.filled = order.filled
        bc.orders[o.order_id] = o
    books = state["books"].values()
    bc.rest_all(bc.orders[oid] for sides in books for side in ("bids", "asks") for oid in sides[side])
    bc._touched = set()
    return bc


def seeded(state: Mapping[str, Any]) -> tuple[LedgerCheck, BookCheck]:
    orders = _orders(state)
    return ledger_from_state(state, orders), book_from_state(state, orders)


def _ledger_view(lc: LedgerCheck) -> dict[str, Any]:
    return {
        "balances": {k: tuple(v) for k, v in lc.balances.items() if v[0] or v[1]},
        "holds": {k: tuple(v) for k, v in lc.holds.items()},
        "keys": set(lc.keys),
        "precisions": dict(lc.precisions),
        "markets": set(lc.markets),
        "last trade id": lc.last_trade_id,
    }


def _book_view(bc: BookCheck) -> dict[str, Any]:
    return {
        "open orders": {
            oid: (o.user_id, o.market, o.side, o.price, o.quantity, o.filled, o.resting)
            for oid, o in bc.orders.items()
        },
        "priority": {
            key: list(oid for level in levels.values() for oid in level)
            for key, levels in bc.sides.items()
            if levels
        },
    }


def fold_differences(
    ledger: LedgerCheck | None, book: BookCheck | None, state: Mapping[str, Any]
) -> list[str]:
    """What of the auditor's folds differs from what they would be seeded with at ``state``
    (empty when they agree); ``None`` for a fold this run does not keep."""
    try:
        want_ledger, want_book = seeded(state)
    except Exception as exc:  # a snapshot the engine could not have written
        return [f"the snapshot's state cannot be read ({exc!r})"]
    out: list[str] = []
    for have, want in (
        (_ledger_view(ledger) if ledger is not None else {}, _ledger_view(want_ledger)),
        (_book_view(book) if book is not None else {}, _book_view(want_book)),
    ):
        out += [name for name in have if have[name] != want[name]]
    return out


def ids_of(ledger: LedgerCheck, known: Iterable[str]) -> set[str]:
    """The ids this fold saw that ``known`` does not hold."""
    return ledger.ids.difference(known)
