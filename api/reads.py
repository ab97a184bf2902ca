"""What the routes read, and from where: the read models (``projections.queries``), never a fold.

``Reads`` is the interface the routes depend on; ``ProjectionReads`` implements it by calling the
query functions of docs/read-models.md on one read store. Tests may swap in another
implementation through ``Services``. Every method is synchronous and short: async routes call
them in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from api.errors import ApiError

Row = dict[str, Any]
Page = dict[str, Any]  # {"data": [...], "next_cursor": str | None}
R = TypeVar("R")


class Reads(Protocol):
    def projected_position(self) -> int:
        """The exchange-log position that every exchange-log read model has applied."""

    def status(self) -> dict[str, Row]:
        """Per read model: position, head, lag, error."""

    def user_by_username(self, username: str) -> Row | None: ...
    def assets(self) -> list[Row]: ...
    def asset(self, symbol: str) -> Row | None: ...
    def markets(self) -> list[Row]: ...
    def market(self, symbol: str) -> Row | None: ...
    def balances(self, user_id: str) -> Row: ...
    def ledger(self, user_id: str, cursor: str | None, limit: int) -> Page: ...
    def withdrawal(self, withdrawal_id: str) -> Row | None: ...
    def order(self, order_id: str) -> Row | None: ...
    def orders(self, user_id: str, market: str | None, status: str, cursor: str | None, limit: int
               ) -> Page: ...
    def fills(self, user_id: str, market: str | None, order_id: str | None, cursor: str | None,
              limit: int) -> Page: ...
    def book(self, market: str, depth: int) -> Row | None: ...
    def trades(self, market: str, cursor: str | None, limit: int) -> Page: ...
    def candles(self, market: str, interval: str, start: str | None, end: str | None, limit: int
                ) -> list[Row]: ...
    def ticker(self, market: str) -> Row | None: ...
    def notifications(self, user_id: str, after: int | None, limit: int) -> Page: ...
    def preferences(self, user_id: str) -> Row: ...
    def set_preferences(self, user_id: str, kinds: Sequence[str], channels: Sequence[str]) -> Row: ...
    def event_position(self, event_id: str) -> Row | None: ...
    def outcome_of(self, request_id: str) -> Row | None: ...


class ProjectionReads:
    """``Reads`` on the read tables, through ``projections.queries`` only."""

    def __init__(self, store: Any, logs: Any) -> None:
        from projections import queries

        self.q = queries
        self.store = store
        self.logs = logs

    def _paged(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        try:
            return fn(self.store, *args, **kwargs)
        except self.q.BadCursor:
            raise ApiError(400, "bad_cursor", "the cursor is not one this list gave") from None

    def projected_position(self) -> int:
        rows = self.q.positions(self.store)
        exchange = [r["position"] for r in rows.values() if r.get("source", "exchange") == "exchange"]
        return min(exchange) if exchange else 0

    def status(self) -> dict[str, Row]:
        result: dict[str, Row] = self.q.status(self.store, self.logs)
        return result

    def user_by_username(self, username: str) -> Row | None:
        return self.q.get_user_by_name(self.store, username)

    def assets(self) -> list[Row]:
        return self.q.assets(self.store)

    def asset(self, symbol: str) -> Row | None:
        return self.q.asset(self.store, symbol)

    def markets(self) -> list[Row]:
        return self.q.markets(self.store)

    def market(self, symbol: str) -> Row | None:
        return self.q.market(self.store, symbol)

    def balances(self, user_id: str) -> Row:
        return self.q.balances(self.store, user_id)

    def ledger(self, user_id: str, cursor: str | None, limit: int) -> Page:
        return self._paged(self.q.ledger, user_id, limit=limit, cursor=cursor)

    def withdrawal(self, withdrawal_id: str) -> Row | None:
        return self.q.withdrawal(self.store, withdrawal_id)

    def order(self, order_id: str) -> Row | None:
        return self.q.order(self.store, order_id)

    def orders(self, user_id: str, market: str | None, status: str, cursor: str | None, limit: int
               ) -> Page:
        return self._paged(self.q.orders, user_id, market=market, status=status, limit=limit, cursor=cursor)

    def fills(self, user_id: str, market: str | None, order_id: str | None, cursor: str | None,
              limit: int) -> Page:
        return self._paged(self.q.fills, user_id, market=market, order_id=order_id, limit=limit,
                           cursor=cursor)

    def book(self, market: str, depth: int) -> Row | None:
        return self.q.book(self.store, market, depth=depth)

    def trades(self, market: str, cursor: str | None, limit: int) -> Page:
        return self._paged(self.q.trades, market, limit=limit, cursor=cursor)

    def candles(self, market: str, interval: str, start: str | None, end: str | None, limit: int
                ) -> list[Row]:
        try:
            return self.q.candles(
                self.store, market, interval, start=start, end=end, limit=limit
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_value", str(exc)) from None

    def ticker(self, market: str) -> Row | None:
        return self.q.ticker(self.store, market)

    def notifications(self, user_id: str, after: int | None, limit: int) -> Page:
        return self.q.notifications(self.store, user_id, after=after, limit=limit)

    def preferences(self, user_id: str) -> Row:
        return self.q.preferences(self.store, user_id)

    def set_preferences(self, user_id: str, kinds: Sequence[str], channels: Sequence[str]) -> Row:
        try:
            return self.q.set_preferences(self.store, user_id, kinds, channels)
        except ValueError as exc:
            raise ApiError(422, "invalid_value", str(exc)) from None

    def event_position(self, event_id: str) -> Row | None:
        return self.q.event_position(self.store, event_id)

    def outcome_of(self, request_id: str) -> Row | None:
        return self.q.outcome_of(self.store, request_id)
