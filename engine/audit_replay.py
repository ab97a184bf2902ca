"""State as of a point of the exchange log, for ``spotex replay`` (pure: outcomes in, state out).

``fold`` applies recorded facts to a fresh ``Exchange`` (its ``apply``: no decision is made
again) up to an exchange-log position, or up to the last outcome at or before a time;
``render_state`` gives balances, open orders and books as decimal strings
(``domain.amounts.format_units``, ``Market.format_price``/``format_quantity``).
Replay trusts the log; ``spotex audit`` is what proves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from domain.amounts import format_units
from engine.audit import Unreadable
from engine.exchange import Exchange
from engine.log import RecordedOutcome


class ReplayError(ValueError):
    """The state cannot be replayed or rendered as asked."""


def fold(
    outcomes: Iterable[RecordedOutcome | Unreadable], at: int | datetime
) -> tuple[Exchange, RecordedOutcome | None]:
    """A fresh Exchange with the recorded facts applied up to a position or a time."""
    ex, last = Exchange(), None
    for o in outcomes:
        if isinstance(o, Unreadable):
            raise ReplayError(f"exchange log position {o.position}: {o.error}")
        if isinstance(at, int) and o.position > at:
            break
        if isinstance(at, datetime) and datetime.fromisoformat(o.time) > at:
            break
        try:
            ex.apply_all(o.facts)
        except Exception as exc:
            raise ReplayError(
                f"exchange log position {o.position} does not apply: {exc!r} (run spotex audit)"
            ) from exc
        last = o
    return ex, last


def render_state(ex: Exchange, user: str | None = None, market: str | None = None) -> dict[str, Any]:
    """Balances, open orders and books as decimal strings, optionally for one user or market."""
    names = {u.user_id: u.username for u in ex.users.values()}
    user_id = None
    if user is not None:
        user_id = ex.usernames.get(user)
        if user_id is None:
            raise ReplayError(f"no user {user!r} at that point")
    if market is not None and market not in ex.markets:
        raise ReplayError(f"no market {market!r} at that point")
    wanted_assets = None if market is None else {ex.markets[market].base, ex.markets[market].quote}
    balances = []
    for (account, asset), (available, frozen) in sorted(ex.ledger.balances.items()):
        if (user_id is not None and account != user_id) or (wanted_assets and asset not in wanted_assets):
            continue
        p = ex.assets[asset].precision
        balances.append(
            {
                "user": names.get(account, account),
                "asset": asset,
                "available": format_units(available, p),
                "frozen": format_units(frozen, p),
                "total": format_units(available + frozen, p),
            }
        )
    orders = []
    for o in ex.orders.values():
        if (user_id is not None and o.user_id != user_id) or (market is not None and o.market != market):
            continue
        m = ex.markets[o.market]
        orders.append(
            {
                "order_id": o.order_id,
                "user": names.get(o.user_id, o.user_id),
                "market": o.market,
                "side": o.side,
                "price": m.format_price(o.price or 0),
                "quantity": m.format_quantity(o.quantity or 0),
                "filled": m.format_quantity(o.filled),
                "remaining": m.format_quantity(o.remaining),
                "held": format_units(o.hold, ex.assets[o.hold_asset].precision),
                "hold_asset": o.hold_asset,
            }
        )
    books = {}
    for symbol, book in sorted(ex.books.items()):
        if market is not None and symbol != market:
            continue
        m = ex.markets[symbol]
        books[symbol] = {
            "status": ex.status.get(symbol),
            **{
                side: [[m.format_price(p), m.format_quantity(q)] for p, q in book.depth(s)]
                for side, s in (("bids", "buy"), ("asks", "sell"))
            },
        }
    return {"balances": balances, "orders": orders, "books": books}
