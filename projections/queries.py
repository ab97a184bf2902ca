"""What the api reads: plain functions over the read tables, in the API's shapes.

Every function takes the ``ReadStore`` first and runs one read transaction (a consistent
snapshot on PostgreSQL). Nothing here folds a log. Shapes, cursors and the meaning of each field
are documented in docs/read-models.md; keep them stable (add, never break).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from domain.markets import Asset, Market
from engine.log import Logs
from projections.base import epoch_seconds, iso_of
from projections.base import outcome_event_id as _outcome_event_id
from projections.candles import PERIODS
from projections.notifications import KINDS
from projections.registry import PROJECTIONS
from projections.store import ReadStore, Tx, big
from projections.ticker import WINDOW_MINUTES, render_stats, window_stats
from projections.tracking import now as _now
from projections.tracking import read_tracking

Row = dict[str, Any]
Page = dict[str, Any]
CHANNELS = ("ws", "email", "webhook", "sms", "push")
DEFAULT_CHANNELS = ("ws",)
MAX_LIMIT = 1000


class BadCursor(ValueError):
    """A cursor that this query did not make."""


def outcome_event_id(request_id: str) -> str:
    """The outcome's event id for a request id: ``uuid5(UUID(request_id), "outcome")``."""
    return _outcome_event_id(request_id)


# -- helpers --------------------------------------------------------------------------------


def _limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


def _encode(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _decode(cursor: str, width: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("malformed cursor") from None
    if not isinstance(values, list) or len(values) != width:
        raise BadCursor("malformed cursor")
    return values


def _page(rows: list[Row], limit: int, raw: list[Sequence[Any]]) -> Page:
    """A page; ``raw`` holds each row's sort key values, for the next cursor."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode(raw[limit - 1]) if more else None
    return {"data": rows, "next_cursor": cursor}


def _dicts(cols: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[Row]:
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _market_of(tx: Tx, symbol: str) -> Market | None:
    row = tx.fetchone(
        "SELECT m.symbol, m.base, m.quote, m.tick_size, m.lot_size, m.min_notional, m.maker_fee, "
        "m.taker_fee, b.asset_precision, q.asset_precision FROM markets m "
        "JOIN assets b ON b.symbol = m.base JOIN assets q ON q.symbol = m.quote WHERE m.symbol = ?",
        (symbol,),
    )
    if row is None:
        return None
    return Market.create(row[0], Asset(row[1], row[8]), Asset(row[2], row[9]), *row[3:8])


# -- users, assets, markets -----------------------------------------------------------------

USER_COLS = ("user_id", "username", "roles", "password_hash", "created_at", "position")


def _user(row: Sequence[Any] | None) -> Row | None:
    if row is None:
        return None
    user = dict(zip(USER_COLS, row, strict=True))
    user["roles"] = json.loads(user["roles"])
    user["position"] = int(user["position"])
    return user


def get_user_by_name(store: ReadStore, username: str) -> Row | None:
    with store.read() as tx:
        return _user(tx.fetchone(f"SELECT {', '.join(USER_COLS)} FROM users WHERE username = ?", (username,)))


def get_user(store: ReadStore, user_id: str) -> Row | None:
    with store.read() as tx:
        return _user(tx.fetchone(f"SELECT {', '.join(USER_COLS)} FROM users WHERE user_id = ?", (user_id,)))


def assets(store: ReadStore) -> list[Row]:
    with store.read() as tx:
        rows = tx.fetchall("SELECT symbol, asset_precision FROM assets ORDER BY symbol")
    return [{"symbol": s, "precision": int(p)} for s, p in rows]


def asset(store: ReadStore, symbol: str) -> Row | None:
    with store.read() as tx:
        row = tx.fetchone("SELECT symbol, asset_precision FROM assets WHERE symbol = ?", (symbol,))
    return None if row is None else {"symbol": row[0], "precision": int(row[1])}


MARKET_COLS = ("symbol", "base", "quote", "tick_size", "lot_size", "min_notional", "maker_fee",
               "taker_fee", "status")


def markets(store: ReadStore) -> list[Row]:
    with store.read() as tx:
        rows = tx.fetchall(f"SELECT {', '.join(MARKET_COLS)} FROM markets ORDER BY symbol")
    return _dicts(MARKET_COLS, rows)


def market(store: ReadStore, symbol: str) -> Row | None:
    with store.read() as tx:
        row = tx.fetchone(f"SELECT {', '.join(MARKET_COLS)} FROM markets WHERE symbol = ?", (symbol,))
    return None if row is None else dict(zip(MARKET_COLS, row, strict=True))


# -- funds ----------------------------------------------------------------------------------


def _position_of(tx: Tx, name: str) -> int:
    row = tx.fetchone("SELECT position FROM projection_tracking WHERE name = ?", (name,))
    return 0 if row is None else int(row[0])


def balances(store: ReadStore, user_id: str) -> Row:
    with store.read() as tx:
        position = _position_of(tx, "balances")
        rows = tx.fetchall(
            "SELECT asset, available_str, frozen_str, total_str FROM balances WHERE account = ? "
            "ORDER BY asset",
            (user_id,),
        )
    return {
        "position": position,
        "balances": [{"asset": a, "available": av, "frozen": fr, "total": to} for a, av, fr, to in rows],
    }


def ledger(
    store: ReadStore, user_id: str, asset: str | None = None, limit: int = 100,
    cursor: str | None = None,
) -> Page:
    limit = _limit(limit)
    where: list[str] = ["account = ?"]
    params: list[Any] = [user_id]
    if asset is not None:
        where.append("asset = ?")
        params.append(asset)
    if cursor is not None:
        pos, idx, a = _decode(cursor, 3)
        where.append(
            "(position < ? OR (position = ? AND (fact_index < ? OR (fact_index = ? AND asset < ?))))"
        )
        params += [pos, pos, idx, idx, a]
    with store.read() as tx:
        rows = tx.fetchall(
            "SELECT position, fact_index, event_id, kind, asset, available_delta_str, "
            "frozen_delta_str, time, ref FROM ledger WHERE " + " AND ".join(where)
            + " ORDER BY position DESC, fact_index DESC, asset DESC LIMIT ?",
            (*params, limit + 1),
        )
    data = [
        {"position": int(r[0]), "event_id": r[2], "kind": r[3], "asset": r[4],
         "available_delta": r[5], "frozen_delta": r[6], "time": r[7], "ref": r[8]}
        for r in rows
    ]
    return _page(data, limit, [(int(r[0]), int(r[1]), r[4]) for r in rows])


WITHDRAWAL_COLS = ("withdrawal_id", "user_id", "asset", "amount_str", "reference", "status", "reason",
                   "created_at", "updated_at", "position", "created_position")


def _withdrawal(r: Sequence[Any]) -> Row:
    row = dict(zip(WITHDRAWAL_COLS, r, strict=True))
    row["amount"] = row.pop("amount_str")
    row["position"] = int(row["position"])
    del row["created_position"]
    return row


def withdrawal(store: ReadStore, withdrawal_id: str) -> Row | None:
    with store.read() as tx:
        r = tx.fetchone(
            f"SELECT {', '.join(WITHDRAWAL_COLS)} FROM withdrawals WHERE withdrawal_id = ?",
            (str(withdrawal_id),),
        )
    return None if r is None else _withdrawal(r)


def withdrawals(store: ReadStore, user_id: str, limit: int = 100, cursor: str | None = None) -> Page:
    limit = _limit(limit)
    where: list[str] = ["user_id = ?"]
    params: list[Any] = [user_id]
    if cursor is not None:
        (created,) = _decode(cursor, 1)
        where.append("created_position < ?")
        params.append(created)
    with store.read() as tx:
        rows = tx.fetchall(
            f"SELECT {', '.join(WITHDRAWAL_COLS)} FROM withdrawals WHERE " + " AND ".join(where)
            + " ORDER BY created_position DESC LIMIT ?",
            (*params, limit + 1),
        )
    return _page([_withdrawal(r) for r in rows], limit, [(int(r[-1]),) for r in rows])


# -- orders and fills -----------------------------------------------------------------------

ORDER_SELECT = (
    "order_id", "user_id", "client_order_id", "market", "side", "type", "price_str",
    "quantity_str", "quote_quantity_str", "filled_str", "remaining_str", "filled_quote_str",
    "average_price_str", "fee_str", "fee_asset", "time_in_force", "post_only",
    "self_trade_prevention", "status", "reject_reason", "reject_message", "created_at",
    "updated_at", "position", "created_position",
)
ORDER_FIELDS = (
    "order_id", "user_id", "client_order_id", "market", "side", "type", "price", "quantity",
    "quote_quantity", "filled_quantity", "remaining_quantity", "filled_quote", "average_price",
    "fee", "fee_asset", "time_in_force", "post_only", "self_trade_prevention", "status",
    "reject_reason", "reject_message", "created_at", "updated_at", "position", "created_position",
)
CLOSED = ("filled", "cancelled", "expired", "rejected")


def _order(r: Sequence[Any]) -> Row:
    row = dict(zip(ORDER_FIELDS, r, strict=True))
    row["post_only"] = None if row["post_only"] is None else bool(row["post_only"])
    row["position"] = int(row["position"])
    del row["created_position"]
    return row


def order(store: ReadStore, order_id: str) -> Row | None:
    with store.read() as tx:
        r = tx.fetchone(f"SELECT {', '.join(ORDER_SELECT)} FROM orders WHERE order_id = ?", (str(order_id),))
    return None if r is None else _order(r)


def orders(
    store: ReadStore, user_id: str, market: str | None = None, status: str = "all",
    limit: int = 100, cursor: str | None = None,
) -> Page:
    limit = _limit(limit)
    where: list[str] = ["user_id = ?"]
    params: list[Any] = [user_id]
    if market is not None:
        where.append("market = ?")
        params.append(market)
    if status == "open":
        where.append("status IN ('open', 'partially_filled')")
    elif status == "closed":
        where.append("status IN ('filled', 'cancelled', 'expired', 'rejected')")
    elif status != "all":
        where.append("status = ?")
        params.append(status)
    if cursor is not None:
        (created,) = _decode(cursor, 1)
        where.append("created_position < ?")
        params.append(created)
    with store.read() as tx:
        rows = tx.fetchall(
            f"SELECT {', '.join(ORDER_SELECT)} FROM orders WHERE " + " AND ".join(where)
            + " ORDER BY created_position DESC LIMIT ?",
            (*params, limit + 1),
        )
    return _page([_order(r) for r in rows], limit, [(int(r[-1]),) for r in rows])


FILL_SELECT = ("trade_id", "order_id", "user_id", "market", "side", "price_str", "quantity_str",
               "quote_quantity_str", "fee_str", "fee_asset", "liquidity", "time", "position")
FILL_FIELDS = ("trade_id", "order_id", "user_id", "market", "side", "price", "quantity",
               "quote_quantity", "fee", "fee_asset", "liquidity", "time", "position")


def fills(
    store: ReadStore, user_id: str, market: str | None = None, order_id: str | None = None,
    limit: int = 100, cursor: str | None = None,
) -> Page:
    limit = _limit(limit)
    where: list[str] = ["user_id = ?"]
    params: list[Any] = [user_id]
    if market is not None:
        where.append("market = ?")
        params.append(market)
    if order_id is not None:
        where.append("order_id = ?")
        params.append(str(order_id))
    if cursor is not None:
        trade_id, liquidity = _decode(cursor, 2)
        where.append("(trade_id < ? OR (trade_id = ? AND liquidity < ?))")
        params += [trade_id, trade_id, liquidity]
    with store.read() as tx:
        rows = tx.fetchall(
            f"SELECT {', '.join(FILL_SELECT)} FROM fills WHERE " + " AND ".join(where)
            + " ORDER BY trade_id DESC, liquidity DESC LIMIT ?",
            (*params, limit + 1),
        )
    data = []
    for r in rows:
        row = dict(zip(FILL_FIELDS, r, strict=True))
        row["trade_id"], row["position"] = int(row["trade_id"]), int(row["position"])
        data.append(row)
    return _page(data, limit, [(d["trade_id"], d["liquidity"]) for d in data])


# -- market data ----------------------------------------------------------------------------


def book(store: ReadStore, market: str, depth: int = 50) -> Row | None:
    depth = max(1, min(int(depth), 5000))
    with store.read() as tx:
        state = tx.fetchone("SELECT sequence, position FROM book_state WHERE market = ?", (market,))
        if state is None:
            return None
        sides = {}
        for side, desc in (("buy", True), ("sell", False)):
            sides[side] = [
                [p, q]
                for p, q in tx.fetchall(
                    "SELECT price_str, quantity_str FROM book_levels WHERE market = ? AND side = ? "
                    f"ORDER BY {store.order_big('price', desc)} LIMIT ?",
                    (market, side, depth),
                )
            ]
    return {"market": market, "sequence": int(state[0]), "position": int(state[1]),
            "bids": sides["buy"], "asks": sides["sell"]}


def book_updates(store: ReadStore, market: str, after_sequence: int, limit: int = 1000) -> list[Row]:
    limit = _limit(limit)
    with store.read() as tx:
        rows = tx.fetchall(
            "SELECT sequence, side, price_str, quantity_str, position FROM book_changes "
            "WHERE market = ? AND sequence > ? AND sequence <= ? ORDER BY sequence, side, "
            + store.order_big("price"),
            (market, int(after_sequence), int(after_sequence) + limit),
        )
    out: list[Row] = []
    for sequence, side, price, qty, position in rows:
        if not out or out[-1]["sequence"] != int(sequence):
            out.append({"sequence": int(sequence), "position": int(position), "bids": [], "asks": []})
        out[-1]["bids" if side == "buy" else "asks"].append([price, qty])
    for update in out:
        update["bids"].reverse()  # bids descending, as in the book
    return out


def trades(store: ReadStore, market: str, limit: int = 100, cursor: str | None = None) -> Page:
    limit = _limit(limit)
    where: list[str] = ["market = ?"]
    params: list[Any] = [market]
    if cursor is not None:
        (trade_id,) = _decode(cursor, 1)
        where.append("trade_id < ?")
        params.append(trade_id)
    with store.read() as tx:
        rows = tx.fetchall(
            "SELECT trade_id, price_str, quantity_str, quote_quantity_str, taker_side, time, position "
            "FROM trades WHERE " + " AND ".join(where) + " ORDER BY trade_id DESC LIMIT ?",
            (*params, limit + 1),
        )
    data = [
        {"trade_id": int(r[0]), "price": r[1], "quantity": r[2], "quote_quantity": r[3],
         "taker_side": r[4], "time": r[5], "position": int(r[6])}
        for r in rows
    ]
    return _page(data, limit, [(d["trade_id"],) for d in data])


def _seconds(value: datetime | str | int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a time must be a datetime, an ISO string or epoch seconds")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return epoch_seconds(value.isoformat())
    try:
        return epoch_seconds(value)
    except ValueError:
        raise ValueError(f"time {value!r} is not ISO 8601") from None


def candles(
    store: ReadStore, market: str, interval: str, start: datetime | str | int | None = None,
    end: datetime | str | int | None = None, limit: int = 1000,
) -> list[Row]:
    if interval not in PERIODS:
        raise ValueError(f"interval must be one of {', '.join(PERIODS)}")
    limit = _limit(limit)
    lo, hi = _seconds(start), _seconds(end)
    where: list[str] = ["market = ?", "period = ?"]
    params: list[Any] = [market, interval]
    if lo is not None:
        where.append("open_time >= ?")
        params.append(lo)
    if hi is not None:
        where.append("open_time <= ?")
        params.append(hi)
    direction = "ASC" if lo is not None else "DESC"
    with store.read() as tx:
        rows = tx.fetchall(
            "SELECT open_time, open_str, high_str, low_str, close_str, volume_str, quote_volume_str, "
            "trades FROM candles WHERE " + " AND ".join(where)
            + f" ORDER BY open_time {direction} LIMIT ?",
            (*params, limit),
        )
    out = [
        {"open_time": iso_of(int(r[0])), "open": r[1], "high": r[2], "low": r[3], "close": r[4],
         "volume": r[5], "quote_volume": r[6], "trades": int(r[7])}
        for r in rows
    ]
    return out if lo is not None else out[::-1]


TICKER_SELECT = ("last_str", "open_str", "high_str", "low_str", "volume_str", "quote_volume_str",
                 "change_str", "change_percent", "trades", "time", "position", "last")


def ticker(store: ReadStore, market: str, now: datetime | None = None) -> Row | None:
    with store.read() as tx:
        r = tx.fetchone(f"SELECT {', '.join(TICKER_SELECT)} FROM tickers WHERE market = ?", (market,))
        if r is None:
            return None
        best = {}
        for side, desc in (("buy", True), ("sell", False)):
            b = tx.fetchone(
                "SELECT price_str FROM book_levels WHERE market = ? AND side = ? "
                f"ORDER BY {store.order_big('price', desc)} LIMIT 1",
                (market, side),
            )
            best[side] = None if b is None else b[0]
        out = {
            "market": market, "last": r[0], "best_bid": best["buy"], "best_ask": best["sell"],
            "open": r[1], "high": r[2], "low": r[3], "volume": r[4], "quote_volume": r[5],
            "change": r[6], "change_percent": r[7], "trades": int(r[8]), "time": r[9],
            "position": int(r[10]),
        }
        if now is not None:
            t = _seconds(now)
            assert t is not None
            end = t - t % 60
            rows = tx.fetchall(
                "SELECT minute, open, high, low, close, volume, quote_volume, trades FROM ticker_buckets "
                "WHERE market = ? AND minute >= ? AND minute <= ? ORDER BY minute",
                (market, end - (WINDOW_MINUTES - 1) * 60, end),
            )
            m = _market_of(tx, market)
            assert m is not None
            buckets = [
                {"open": big(x[1]), "high": big(x[2]), "low": big(x[3]), "close": big(x[4]),
                 "volume": big(x[5]), "quote_volume": big(x[6]), "trades": int(x[7])}
                for x in rows
            ]
            stats = window_stats(buckets)
            rendered = render_stats(m, big(r[11]), stats)
            out.update(open=rendered["open_str"], high=rendered["high_str"], low=rendered["low_str"],
                       volume=rendered["volume_str"], quote_volume=rendered["quote_volume_str"],
                       change=rendered["change_str"], change_percent=rendered["change_percent"],
                       trades=stats["trades"])
    return out


# -- notifications and preferences ----------------------------------------------------------


def _prefs(tx: Tx, user_id: str) -> Row:
    row = tx.fetchone("SELECT kinds, channels FROM preferences WHERE user_id = ?", (user_id,))
    if row is None:
        return {"kinds": list(KINDS), "channels": list(DEFAULT_CHANNELS)}
    return {"kinds": json.loads(row[0]), "channels": json.loads(row[1])}


def preferences(store: ReadStore, user_id: str) -> Row:
    with store.read() as tx:
        return _prefs(tx, user_id)


def set_preferences(store: ReadStore, user_id: str, kinds: Sequence[str], channels: Sequence[str]) -> Row:
    """Store a user's preferences (a plain setting, not a log event; see docs/read-models.md)."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown notification kind {k!r}; kinds: {', '.join(KINDS)}")
    for c in channels:
        if c not in CHANNELS:
            raise ValueError(f"unknown channel {c!r}; channels: {', '.join(CHANNELS)}")
    wanted = {"kinds": [k for k in KINDS if k in kinds], "channels": [c for c in CHANNELS if c in channels]}
    with store.write() as tx:
        tx.execute(
            "INSERT INTO preferences (user_id, kinds, channels, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET kinds = excluded.kinds, channels = excluded.channels, "
            "updated_at = excluded.updated_at",
            (user_id, json.dumps(wanted["kinds"]), json.dumps(wanted["channels"]), _now()),
        )
    return wanted


def notifications(
    store: ReadStore, user_id: str, after: int | str | None = None, limit: int = 100,
    channel: str = "ws",
) -> Page:
    limit = _limit(limit)
    try:
        after_id = 0 if after is None or after == "" else int(after)
    except ValueError:
        raise BadCursor("after must be a notification id") from None
    with store.read() as tx:
        prefs = _prefs(tx, user_id)
        kinds = prefs["kinds"] if channel in prefs["channels"] else []
        if not kinds:
            return {"data": [], "next_cursor": None}
        marks = ", ".join("?" * len(kinds))
        rows = tx.fetchall(
            "SELECT notification_id, kind, time, position, data FROM notifications WHERE user_id = ? "
            f"AND notification_id > ? AND kind IN ({marks}) ORDER BY notification_id LIMIT ?",
            (user_id, after_id, *kinds, limit + 1),
        )
    data = [
        {"notification_id": int(r[0]), "kind": r[1], "time": r[2], "position": int(r[3]),
         "data": json.loads(r[4])}
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    return {"data": data, "next_cursor": str(data[-1]["notification_id"]) if more else None}


# -- the event index, positions and waiting -------------------------------------------------


def event_position(store: ReadStore, event_id: str) -> Row | None:
    event_id = str(event_id)
    with store.read() as tx:
        r = tx.fetchone("SELECT position, actor FROM request_index WHERE event_id = ?", (event_id,))
        if r is not None:
            return {"event_id": event_id, "log": "requests", "position": int(r[0]), "actor": r[1],
                    "request_id": event_id}
        r = tx.fetchone(
            "SELECT position, actor, request_id FROM outcome_index WHERE event_id = ?", (event_id,)
        )
    if r is None:
        return None
    return {"event_id": event_id, "log": "exchange", "position": int(r[0]), "actor": r[1],
            "request_id": r[2]}


OUTCOME_COLS = ("request_id", "event_id", "position", "seq", "request_position", "command", "status",
                "reason", "message", "facts", "actor", "time")


def outcome_of(store: ReadStore, request_id: str) -> Row | None:
    with store.read() as tx:
        r = tx.fetchone(
            f"SELECT {', '.join(OUTCOME_COLS)} FROM outcome_index WHERE request_id = ?", (str(request_id),)
        )
    if r is None:
        return None
    row = dict(zip(OUTCOME_COLS, r, strict=True))
    for k in ("position", "seq", "request_position"):
        row[k] = int(row[k])
    row["facts"] = json.loads(row["facts"])
    return row


def positions(store: ReadStore) -> dict[str, Row]:
    """Every projection's tracking position, source, last update and error (if stopped)."""
    with store.read() as tx:
        rows = read_tracking(tx)
    return {name: row for name, row in rows.items() if name in PROJECTIONS}


def status(store: ReadStore, logs: Logs) -> dict[str, Row]:
    """``positions`` with each log's head and each projection's lag (in positions)."""
    heads = {"exchange": logs.last_outcome_position(), "requests": logs.last_request_position()}
    out = positions(store)
    for row in out.values():
        row["head"] = heads[row["source"]]
        row["lag"] = max(0, row["head"] - row["position"])
    return out


def caught_up(store: ReadStore, position: int, names: Sequence[str] | None = None) -> bool:
    """Whether every exchange-log read model (or those named) reflects the log up to ``position``."""
    wanted = set(names) if names is not None else {
        n for n, cls in PROJECTIONS.items() if cls.source == "exchange"
    }
    with store.read() as tx:
        rows = tx.fetchall("SELECT name, position FROM projection_tracking")
    seen = {name: int(p) for name, p in rows if name in wanted}
    return len(seen) == len(wanted) and all(p >= position for p in seen.values())


def wait_for_outcome(store: ReadStore, request_id: str, timeout: float, poll: float = 0.01) -> Row | None:
    """Block until the request's outcome is decided and every read model reflects it."""
    deadline = time.monotonic() + timeout
    while True:
        found = outcome_of(store, request_id)
        if found is not None and caught_up(store, found["position"]):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
