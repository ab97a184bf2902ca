"""Every projection, by name, in the order the runners apply a page to them."""

from __future__ import annotations

from projections.balances import Balances
from projections.base import Projection
from projections.book import Book
from projections.candles import Candles
from projections.event_index import OutcomeIndex, RequestIndex
from projections.fills import Fills
from projections.ledger import Ledger
from projections.markets import Markets
from projections.notifications import Notifications
from projections.orders import Orders
from projections.ticker import Ticker
from projections.trades import Trades
from projections.users import Users
from projections.withdrawals import Withdrawals

PROJECTIONS: dict[str, type[Projection]] = {
    cls.name: cls
    for cls in (
        OutcomeIndex, Users, Markets, Balances, Orders, Fills, Ledger, Withdrawals, Book, Trades,
        Candles, Ticker, Notifications, RequestIndex,
    )
}


def resolve(name: str) -> list[type[Projection]]:
    """``all`` or one projection's name (a ValueError lists the valid names)."""
    if name == "all":
        return list(PROJECTIONS.values())
    if name not in PROJECTIONS:
        raise ValueError(f"unknown projection {name!r}; one of: all, {', '.join(PROJECTIONS)}")
    return [PROJECTIONS[name]]
