"""The WebSocket fan-out of one api process: one follower task shared by all its connections.

Each api process follows the read models itself: every ``interval`` it reads the projections'
tracking positions (one small query) and, for each channel whose projections moved, the changes
after what it last sent (``book_updates`` after the last sequence, trades after the last trade id,
the latest candles, the ticker, and for ``user`` the exchange log after the last outcome folded).
Sequences, trade ids and positions come from the read models and the log, never from the process,
so every api process sends the same stream and adding processes adds fan-out capacity. In the
embedded default it is the one process.

Invariants:

- One read per channel per tick whatever the number of subscribers; each message is encoded
  once (``api.channels.Outbound``: its JSON text and its WebSocket frame, made in the hub's
  thread) and the same object is offered to every subscriber. A broadcast offers a tick's
  messages to each subscriber and then flushes it once: on the direct path of
  ``api.routers.ws`` that is one socket write per connection per tick, the messages staying
  separate frames in their order.
- ``book``: a subscriber gets the channel's snapshot (the in-memory book, which is the read
  model's book at the channel's sequence) and then every update after it, without gaps. Snapshot
  and registration happen under the hub's lock, which the tick also holds while it reads and
  broadcasts, so nothing is sent twice or missed between them. If the change log ever skips a
  sequence (it should not), the channel reloads and sends everyone a new snapshot.
- ``user``: a connection gets a snapshot at balances position ``Q`` and then only messages of
  positions after ``Q``; each user's messages are never offered to another user's connections.
- Offering never blocks: a subscriber's queue is bounded and a full one drops that subscriber
  (``api.routers.ws``), so a slow client never slows the hub or anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from api.channels import CHANNELS, MAX_PAGES_PER_TICK, Channel, Key, Outbound, encode
from api.user_stream import UserStream, order_resource, user_ids
from projections import delivery
from projections import queries as q

if TYPE_CHECKING:
    from spotex.config import Tuning

log = logging.getLogger("spotex.ws")

USER_PROJECTIONS = ("markets", "balances", "orders", "fills", "notifications")
OUTCOME_PAGE = 1000


class Subscriber(Protocol):
    def offer(self, message: Outbound) -> None:
        """Queue a message without blocking or sending (a full queue drops the subscriber)."""

    def flush(self) -> None:
        """Send what is queued now if the connection takes it without waiting, else let the
        connection's writer send it; never blocks."""


class UserFollow:
    """The connections following one user, each with the position its snapshot was taken at."""

    def __init__(self) -> None:
        self.since: dict[Subscriber, int] = {}


class Hub:
    """Subscriptions of every connection of this process, and the one task that follows."""

    def __init__(self, store: Any, logs: Any, interval: float = 0.01, queue_messages: int = 5000,
                 queue_bytes: int = 8 * 1024 * 1024, send_buffer: int = 0) -> None:
        self.store = store
        self.logs = logs
        self.interval = interval
        # Each connection's bound on what waits to be sent (api.routers.ws)
        self.queue_messages = queue_messages
        self.queue_bytes = queue_bytes
        self.send_buffer = send_buffer  # SO_SNDBUF per connection; 0: the kernel's autotuning
        self.channels: dict[Key, Channel] = {}
        self.subscribers: dict[Key, set[Subscriber]] = {}
        self.users: dict[str, UserFollow] = {}
        self.user_stream = UserStream(store)
        self.user_position: int | None = None  # last exchange position folded for `user`
        self.notification_after = 0
        self.resync: dict[str, int] = {}  # user id → position of a snapshot sent by a restart
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # One thread of its own: reads never queue behind the api's request threads, and a
        # SQLite store keeps one connection for it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spotex-ws")
        self.ticks = 0
        self.sent = 0
        self.closed = False

    @classmethod
    def from_tuning(cls, store: Any, logs: Any, tuning: Tuning) -> Hub:
        """``SPOTEX_WS_POLL`` (seconds), ``SPOTEX_WS_MAX_QUEUE`` (messages),
        ``SPOTEX_WS_MAX_QUEUE_BYTES`` and ``SPOTEX_WS_SEND_BUFFER`` (bytes) per connection, as
        ``spotex.config.Tuning`` read and checked them."""
        return cls(store, logs, interval=tuning.ws_poll, queue_messages=tuning.ws_max_queue,
                   queue_bytes=tuning.ws_max_queue_bytes, send_buffer=tuning.ws_send_buffer)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- subscriptions (called by connections) ------------------------------------------------

    async def subscribe(self, sub: Subscriber, key: Key, before: Outbound | None = None) -> None:
        """Register ``sub`` on a public channel and offer it ``before`` (its ack) and the snapshot.

        Raises UnknownMarket (nothing offered). Subscribing again offers a fresh snapshot.
        """
        async with self._lock:
            channel = self.channels.get(key)
            if channel is None:
                channel = CHANNELS[key[0]](key)
                await self._call(channel.load, self.store)
                self.channels[key] = channel
            if before is not None:
                sub.offer(before)
            sub.offer(channel.snapshot())
            sub.flush()
            self.subscribers.setdefault(key, set()).add(sub)
        self._start()

    async def unsubscribe(self, sub: Subscriber, key: Key) -> None:
        async with self._lock:
            subs = self.subscribers.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subscribers[key]
                    self.channels.pop(key, None)

    async def follow_user(self, sub: Subscriber, user_id: str) -> None:
        """Register ``sub`` on ``user`` and offer it the snapshot (balances and open orders)."""
        async with self._lock:
            if self.user_position is None:
                self.user_position = await self._call(self._head)
                self.notification_after = await self._call(
                    delivery.last_notification_id, self.store, self.user_position)
            snap = await self._call(self._user_snapshot, user_id)
            follow = self.users.setdefault(user_id, UserFollow())
            follow.since[sub] = snap["position"]
            sub.offer(encode(snap))
            sub.flush()
        self._start()

    async def unfollow_user(self, sub: Subscriber, user_id: str) -> None:
        async with self._lock:
            follow = self.users.get(user_id)
            if follow is None:
                return
            follow.since.pop(sub, None)
            if not follow.since:
                del self.users[user_id]
                self.user_stream.forget(user_id)
            if not self.users:  # nobody to fold for: start again from the head next time
                self.user_position = None

    async def drop(self, sub: Subscriber, keys: Iterable[Key], user_id: str | None) -> None:
        """Forget a closed connection everywhere."""
        for key in list(keys):
            await self.unsubscribe(sub, key)
        if user_id is not None:
            await self.unfollow_user(sub, user_id)

    def _head(self) -> int:
        positions = q.positions(self.store)
        return min(int(positions[n]["position"]) for n in USER_PROJECTIONS)

    def _user_snapshot(self, user_id: str) -> dict[str, Any]:
        balances = self.user_stream.follow(user_id)
        orders = q.orders(self.store, user_id, status="open", limit=1000)["data"]
        return {"type": "snapshot", "channel": "user", "position": balances["position"],
                "balances": balances["balances"], "orders": [order_resource(o) for o in orders]}

    # -- the follower -------------------------------------------------------------------------

    def _start(self) -> None:
        if not self.closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spotex-ws-follower")

    async def close(self) -> None:
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        failures = 0
        idle_since = time.monotonic()
        while not self.closed:
            await asyncio.sleep(self.interval if not failures else min(0.05 * 2 ** failures, 5.0))
            if not self.subscribers and not self.users:
                if time.monotonic() - idle_since > 5.0:
                    return  # nobody left: the next subscribe starts the task again
                continue
            idle_since = time.monotonic()
            try:
                async with self._lock:
                    channels = [self.channels[k] for k in self.subscribers if k in self.channels]
                    users = set(self.users)
                    result = await self._call(self._tick, channels, users)
                    self._broadcast(result)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("WebSocket follower: a tick failed (retrying)")

    def _tick(self, channels: list[Channel], users: set[str]
              ) -> tuple[list[tuple[Key, list[Outbound]]], dict[str, list[tuple[int, Outbound]]]]:
        """Runs in the hub's thread: what each channel and each followed user gets now."""
        self.ticks += 1
        positions = {n: int(r["position"]) for n, r in q.positions(self.store).items()}
        public_out = []
        for channel in channels:
            seen = tuple(positions.get(d, 0) for d in channel.deps)
            if seen == channel.seen and not channel.broken:
                continue
            try:
                if channel.broken:
                    channel.load(self.store)
                    texts = [channel.snapshot()]
                    channel.broken = False
                else:
                    texts = channel.poll(self.store)
            except Exception:
                log.exception("WebSocket channel %s failed; it reloads and resends its snapshot", channel.key)
                channel.broken = True
                continue
            channel.seen = seen
            if texts:
                public_out.append((channel.key, texts))
        user_out: dict[str, list[tuple[int, Outbound]]] = {}
        if users and self.user_position is not None:
            try:
                user_out = self._user_tick(positions, users)
            except Exception:
                log.exception("WebSocket user stream failed; its subscribers get fresh snapshots")
                user_out = self._user_restart(users)
        return public_out, user_out

    def _user_restart(self, users: set[str]) -> dict[str, list[tuple[int, Outbound]]]:
        """Start the user stream again from fresh snapshots (its state may hold a failed page).

        Each followed connection gets a new snapshot (a client resets on a snapshot) and then the
        messages after it, as after a subscribe."""
        self.user_stream = UserStream(self.store)
        self.user_position = self._head()
        self.notification_after = delivery.last_notification_id(self.store, self.user_position)
        out: dict[str, list[tuple[int, Outbound]]] = {}
        for user_id in users:
            snap = self._user_snapshot(user_id)
            out[user_id] = [(-1, encode(snap))]
            self.resync[user_id] = snap["position"]
        return out

    def _user_tick(self, positions: dict[str, int], users: set[str]
                   ) -> dict[str, list[tuple[int, Outbound]]]:
        head = min(positions.get(n, 0) for n in USER_PROJECTIONS)
        assert self.user_position is not None
        collected: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        n = 0
        for _ in range(MAX_PAGES_PER_TICK):
            if self.user_position >= head:
                break
            page = self.logs.read_outcomes(self.user_position, OUTCOME_PAGE, head)
            if not page:
                break
            if not users.isdisjoint(user_ids(page)) or any(
                    f["type"] in ("AssetListed", "MarketListed") for o in page for f in o.facts):
                for user_id, messages in self.user_stream.fold(page).items():
                    for position, message in messages:
                        n += 1
                        collected.setdefault(user_id, []).append((position, n, message))
            self.user_position = page[-1].position
        # Notifications up to the same position, after the outcome's own messages.
        upto = self.user_position
        prefs: dict[str, dict[str, Any]] = {}
        while True:
            rows = delivery.notifications_after(self.store, self.notification_after, upto, 1000)
            for row in rows:
                user_id = row["user_id"]
                if user_id in users:
                    if user_id not in prefs:
                        prefs[user_id] = q.preferences(self.store, user_id)
                    if delivery.wants(prefs[user_id], row["kind"], "ws"):
                        n += 1
                        body = {k: row[k] for k in ("notification_id", "kind", "time", "position", "data")}
                        collected.setdefault(user_id, []).append((row["position"], n, {
                            "type": "notification", "channel": "user", "position": row["position"],
                            "notification": body}))
                self.notification_after = row["notification_id"]
            if len(rows) < 1000:
                break
        out: dict[str, list[tuple[int, Outbound]]] = {}
        for user_id, items in collected.items():
            items.sort(key=lambda item: (item[0], item[1]))
            out[user_id] = [(position, encode(message)) for position, _, message in items]
        return out

    def _broadcast(self, result: tuple[list[tuple[Key, list[Outbound]]],
                                       dict[str, list[tuple[int, Outbound]]]]) -> None:
        """Offer the tick's messages, then flush each subscriber that got any, once."""
        public_out, user_out = result
        sent = 0
        touched: dict[Subscriber, None] = {}  # in the order first offered
        for key, messages in public_out:
            subs = self.subscribers.get(key, ())
            for sub in subs:
                for m in messages:
                    sub.offer(m)
                touched[sub] = None
            sent += len(messages) * len(subs)
        for user_id, user_messages in user_out.items():
            follow = self.users.get(user_id)
            if follow is None:
                continue
            for sub, since in follow.since.items():
                for position, m in user_messages:
                    if position > since or position == -1:  # -1: a restart's snapshot
                        sub.offer(m)
                        touched[sub] = None
                        sent += 1
            if user_id in self.resync:
                position = self.resync.pop(user_id)
                for sub in follow.since:
                    follow.since[sub] = position
        for sub in touched:
            sub.flush()
        self.sent += sent

    def stats(self) -> dict[str, Any]:
        return {"channels": len(self.channels),
                "subscriptions": sum(len(s) for s in self.subscribers.values()),
                "users": len(self.users), "ticks": self.ticks, "messages_offered": self.sent,
                "time": time.time()}
