"""Notification delivery, the data side: from the notifications read model to an outbox.

The notifications projection records every notification (order filled, cancelled, rejected,
expired; deposit credited; withdrawal completed or failed). Delivery turns them into work:

- the WebSocket ``user`` channel reads the read model directly (``api.streams``) with
  ``notifications_after`` and honours ``wants(prefs, kind, "ws")``;
- ``dispatch`` writes one ``deliveries`` row per notification and wanted channel (``webhook``,
  ``email``, ``sms``, ``push``) and advances ``delivery_tracking`` **in the same transaction**,
  so a crash or restart neither loses a notification nor dispatches it twice; two dispatchers
  serialise on the tracking row (``FOR UPDATE``; SQLite's write lock);
- senders (``projections.webhooks`` for webhooks; a provider for the other channels) ``claim``
  due rows under a lease and mark them ``delivered`` or schedule a retry. A delivery's id is
  ``uuid5(notification id, channel)``: the ``Idempotency-Key`` a receiver deduplicates on.

Preferences are applied at dispatch time (what the user wanted when the notification happened):
a kind goes to a channel when both are in the user's preferences (``queries.preferences``). The
webhook channel also needs an endpoint: ``set_webhook`` registers it and switches ``webhook`` on
in the preferences, ``delete_webhook`` switches it off (the preferences stay the one place that
says which channels a user wants).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections import queries as q
from projections.store import ReadStore, Tx

DISPATCHER = "dispatch"
SENT_CHANNELS = ("webhook", "email", "sms", "push")  # ws is read live, never queued
NAMESPACE = uuid.UUID("5b07e8de-11fe-4a5e-9d0c-00000000d00d")
DELIVERY_COLS = ("delivery_id", "notification_id", "user_id", "channel", "kind", "target", "payload",
                 "status", "attempts", "next_attempt_at", "lease_until", "last_error", "created_at",
                 "delivered_at")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- reading the notifications read model ---------------------------------------------------


def notifications_after(store: ReadStore, after: int, until_position: int | None = None,
                        limit: int = 1000) -> list[dict[str, Any]]:
    """Every user's notifications with id > ``after`` (and position ≤ ``until_position``), ascending."""
    where, params = ["notification_id > ?"], [int(after)]
    if until_position is not None:
        where.append("position <= ?")
        params.append(int(until_position))
    with store.read() as tx:
        rows = tx.fetchall(
            "SELECT notification_id, user_id, kind, data, time, position FROM notifications WHERE "
            + " AND ".join(where) + " ORDER BY notification_id LIMIT ?", (*params, int(limit)))
    return [{"notification_id": int(r[0]), "user_id": r[1], "kind": r[2], "data": json.loads(r[3]),
             "time": r[4], "position": int(r[5])} for r in rows]


def last_notification_id(store: ReadStore, at_position: int) -> int:
    """The id of the last notification at or before an exchange-log position (0 if none)."""
    with store.read() as tx:
        row = tx.fetchone("SELECT MAX(notification_id) FROM notifications WHERE position <= ?",
                          (int(at_position),))
    return int(row[0]) if row and row[0] is not None else 0


# -- preferences ----------------------------------------------------------------------------


def wants(prefs: Mapping[str, Any], kind: str, channel: str) -> bool:
    """Whether a user with these preferences wants ``kind`` on ``channel`` (kinds × channels)."""
    return kind in prefs["kinds"] and channel in prefs["channels"]


def channels_for(prefs: Mapping[str, Any], kind: str, has_webhook: bool) -> list[str]:
    """The queued channels a notification goes to (webhook only with an endpoint to POST to)."""
    return [c for c in SENT_CHANNELS if wants(prefs, kind, c) and (c != "webhook" or has_webhook)]


def _switch_webhook(store: ReadStore, user_id: str, on: bool) -> None:
    prefs = q.preferences(store, user_id)
    channels = [c for c in prefs["channels"] if c != "webhook"] + (["webhook"] if on else [])
    if set(channels) != set(prefs["channels"]):
        q.set_preferences(store, user_id, prefs["kinds"], channels)


# -- webhook endpoints ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    user_id: str
    url: str
    secret: str
    created_at: str
    updated_at: str


def set_webhook(store: ReadStore, user_id: str, url: str, secret: str | None = None) -> Endpoint:
    """Create or replace the user's endpoint (a new secret unless one is given) and switch the
    webhook channel on in the user's preferences."""
    secret = secret or "whsec_" + secrets.token_urlsafe(32)
    at = now_iso()
    with store.write() as tx:
        tx.execute(
            "INSERT INTO webhook_endpoints (user_id, url, secret, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET url = excluded.url, "
            "secret = excluded.secret, updated_at = excluded.updated_at",
            (user_id, url, secret, at, at),
        )
    _switch_webhook(store, user_id, True)
    found = get_webhook(store, user_id)
    assert found is not None
    return found


def get_webhook(store: ReadStore, user_id: str) -> Endpoint | None:
    with store.read() as tx:
        row = tx.fetchone("SELECT user_id, url, secret, created_at, updated_at FROM webhook_endpoints "
                          "WHERE user_id = ?", (user_id,))
    return None if row is None else Endpoint(*row)


def delete_webhook(store: ReadStore, user_id: str) -> bool:
    """Remove the endpoint and switch the webhook channel off; False if there was none."""
    with store.write() as tx:
        found = tx.fetchone("SELECT 1 FROM webhook_endpoints WHERE user_id = ?", (user_id,))
        tx.execute("DELETE FROM webhook_endpoints WHERE user_id = ?", (user_id,))
    _switch_webhook(store, user_id, False)
    return found is not None


# -- dispatch: notifications → outbox, exactly once -----------------------------------------


def delivery_id(notification_id: int, channel: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{notification_id}:{channel}"))


def payload(row: Mapping[str, Any], channel: str) -> str:
    """The JSON body a channel delivers (webhooks POST it as is)."""
    body = {"id": delivery_id(row["notification_id"], channel), "notification_id": row["notification_id"],
            "kind": row["kind"], "user_id": row["user_id"], "time": row["time"],
            "position": row["position"], "data": row["data"]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _lock_position(tx: Tx) -> int:
    tx.execute("INSERT INTO delivery_tracking (name, position, updated_at) VALUES (?, 0, ?) "
               "ON CONFLICT (name) DO NOTHING", (DISPATCHER, now_iso()))
    sql = "SELECT position FROM delivery_tracking WHERE name = ?"
    if tx.dialect == "postgres":
        sql += " FOR UPDATE"
    row = tx.fetchone(sql, (DISPATCHER,))
    return int(row[0])


def dispatch(store: ReadStore, limit: int = 500, clock: Any = time.time) -> list[tuple[str, str]]:
    """Turn the next notifications into deliveries; returns the new ``(delivery_id, channel)``s."""
    created: list[tuple[str, str]] = []
    with store.write() as tx:
        after = _lock_position(tx)
        rows = tx.fetchall(
            "SELECT notification_id, user_id, kind, data, time, position FROM notifications "
            "WHERE notification_id > ? ORDER BY notification_id LIMIT ?", (after, int(limit)))
        if not rows:
            return []
        users = sorted({r[1] for r in rows})
        prefs = {u: q.preferences(store, u) for u in users}
        hooks = {r[0]: r[1] for r in tx.select_in("SELECT user_id, url FROM webhook_endpoints",
                                                  ("user_id",), [(u,) for u in users])}
        at, t = now_iso(), float(clock())
        inserts = []
        for r in rows:
            row = {"notification_id": int(r[0]), "user_id": r[1], "kind": r[2], "data": json.loads(r[3]),
                   "time": r[4], "position": int(r[5])}
            for channel in channels_for(prefs[row["user_id"]], row["kind"], row["user_id"] in hooks):
                did = delivery_id(row["notification_id"], channel)
                target = hooks[row["user_id"]] if channel == "webhook" else None
                inserts.append((did, row["notification_id"], row["user_id"], channel, row["kind"], target,
                                payload(row, channel), "pending", 0, t, None, None, at, None))
                created.append((did, channel))
        marks = ", ".join("?" * len(DELIVERY_COLS))
        tx.executemany(f"INSERT INTO deliveries ({', '.join(DELIVERY_COLS)}) VALUES ({marks}) "
                       "ON CONFLICT (notification_id, channel) DO NOTHING", inserts)
        tx.execute("UPDATE delivery_tracking SET position = ?, updated_at = ? WHERE name = ?",
                   (int(rows[-1][0]), at, DISPATCHER))
    return created


def dispatched_position(store: ReadStore) -> int:
    with store.read() as tx:
        row = tx.fetchone("SELECT position FROM delivery_tracking WHERE name = ?", (DISPATCHER,))
    return 0 if row is None else int(row[0])


# -- the outbox: claim, deliver, retry ------------------------------------------------------


def _delivery(r: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(DELIVERY_COLS, r, strict=True))


def claim(store: ReadStore, channel: str, limit: int = 100, lease: float = 60.0,
          clock: Any = time.time) -> list[dict[str, Any]]:
    """Take up to ``limit`` due pending deliveries of a channel for ``lease`` seconds."""
    t = float(clock())
    skip = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgres" else ""
    with store.write() as tx:
        rows = tx.fetchall(
            f"SELECT {', '.join(DELIVERY_COLS)} FROM deliveries WHERE channel = ? AND status = 'pending' "
            "AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) "
            f"ORDER BY next_attempt_at, notification_id LIMIT ?{skip}", (channel, t, t, int(limit)))
        found = [_delivery(r) for r in rows]
        tx.executemany("UPDATE deliveries SET lease_until = ? WHERE delivery_id = ?",
                       [(t + lease, d["delivery_id"]) for d in found])
    for d in found:
        d["lease_until"] = t + lease
    return found


def claim_one(store: ReadStore, delivery_id_: str, lease: float = 60.0, clock: Any = time.time
              ) -> dict[str, Any] | None:
    """Take one pending delivery by id (whatever its due time), unless someone holds it."""
    t = float(clock())
    lock = " FOR UPDATE" if store.dialect == "postgres" else ""
    with store.write() as tx:
        r = tx.fetchone(f"SELECT {', '.join(DELIVERY_COLS)} FROM deliveries WHERE delivery_id = ?{lock}",
                        (delivery_id_,))
        if r is None:
            return None
        d = _delivery(r)
        if d["status"] != "pending" or (d["lease_until"] is not None and d["lease_until"] >= t):
            return None
        tx.execute("UPDATE deliveries SET lease_until = ? WHERE delivery_id = ?", (t + lease, delivery_id_))
    d["lease_until"] = t + lease
    return d


def mark_delivered(store: ReadStore, delivery_id_: str, attempts: int) -> None:
    with store.write() as tx:
        tx.execute("UPDATE deliveries SET status = 'delivered', attempts = ?, lease_until = NULL, "
                   "last_error = NULL, delivered_at = ? WHERE delivery_id = ?",
                   (attempts, now_iso(), delivery_id_))


def mark_retry(store: ReadStore, delivery_id_: str, attempts: int, next_attempt_at: float,
               error: str) -> None:
    with store.write() as tx:
        tx.execute("UPDATE deliveries SET attempts = ?, next_attempt_at = ?, lease_until = NULL, "
                   "last_error = ? WHERE delivery_id = ? AND status = 'pending'",
                   (attempts, next_attempt_at, error[:1000], delivery_id_))


def mark_failed(store: ReadStore, delivery_id_: str, attempts: int, error: str) -> None:
    with store.write() as tx:
        tx.execute("UPDATE deliveries SET status = 'failed', attempts = ?, lease_until = NULL, "
                   "last_error = ? WHERE delivery_id = ? AND status = 'pending'",
                   (attempts, error[:1000], delivery_id_))


def deliveries(store: ReadStore, user_id: str | None = None, channel: str | None = None,
               limit: int = 1000) -> list[dict[str, Any]]:
    """Outbox rows (operations and tests), by notification id."""
    where, params = ["1 = 1"], []
    if user_id is not None:
        where.append("user_id = ?")
        params.append(user_id)
    if channel is not None:
        where.append("channel = ?")
        params.append(channel)
    with store.read() as tx:
        rows = tx.fetchall(f"SELECT {', '.join(DELIVERY_COLS)} FROM deliveries WHERE "
                           + " AND ".join(where) + " ORDER BY notification_id, channel LIMIT ?",
                           (*params, int(limit)))
    return [_delivery(r) for r in rows]


def stale(store: ReadStore, channel: str, older_than: float, clock: Any = time.time) -> list[str]:
    """Pending deliveries due for ``older_than`` seconds and not leased (their message was lost)."""
    t = float(clock())
    with store.read() as tx:
        rows = tx.fetchall("SELECT delivery_id FROM deliveries WHERE channel = ? AND status = 'pending' "
                           "AND next_attempt_at < ? AND (lease_until IS NULL OR lease_until < ?) "
                           "ORDER BY next_attempt_at LIMIT 1000", (channel, t - older_than, t))
    return [r[0] for r in rows]
