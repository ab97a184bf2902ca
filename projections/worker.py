"""Production workers: dramatiq actors that only say "catch up" or "rebuild", and a scheduler.

The messages carry nothing but a projection's name (and a token for a rebuild), so a message
that is duplicated, retried, delayed or reordered is harmless by construction: a catch-up
applies the events after the tracked position, whatever asked for it, and a rebuild token is
done once. One worker at a time per projection: the actor takes the projection's lock without
waiting (a PostgreSQL advisory lock) and leaves if another worker holds it — the scheduler asks
again while the projection lags. Correctness does not depend on the lock (the tracking row is
re-checked in every batch's transaction); it only saves work.

The scheduler polls the logs' heads and the tracking positions (a few cheap queries every
``interval``) and enqueues a catch-up for each projection behind its log; a stopped projection
(error recorded) is asked again every ``retry_after`` seconds, never skipped.

Nothing is built at import time: ``declare_actors(broker, context)`` binds the actors to a broker
made from ``SPOTEX_BROKER_URL`` by the ``spotex worker`` command (or a test).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.log import Logs
from projections.locks import ProjectionLock
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS, resolve
from projections.runner import Follower, catch_up, followers_for, log_sources
from projections.store import ReadStore
from projections.tracking import now, read_tracking
from spotex.config import ConfigError

log = logging.getLogger("spotex.worker")

QUEUE = "spotex_projections"
PAGES_PER_MESSAGE = 50  # ~50,000 events; the scheduler sends another message if more remain


def make_broker(url: str) -> Any:
    """A dramatiq broker for ``amqp://`` (RabbitMQ) or ``redis://`` URLs."""
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, confirm_delivery=True)
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url)  # type: ignore[no-untyped-call]
    raise ConfigError(f"SPOTEX_BROKER_URL must be amqp://… or redis://…, got {url!r}")


@dataclass
class WorkerContext:
    """What the actors of one worker process share: stores, logs, followers and locks."""

    store: ReadStore
    logs: Logs
    followers: dict[str, Follower] = field(default_factory=dict)
    locks: dict[str, ProjectionLock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.followers = followers_for(self.store, self.logs)
        self.locks = {name: ProjectionLock(self.store, name) for name in self.followers}
        self.sources = log_sources(self.logs)

    def catch_up(self, name: str) -> int:
        """One bounded catch-up of one projection, if no other worker is at it."""
        if name not in self.followers:
            log.warning("catch-up for unknown projection %r ignored", name)
            return 0
        with self.guard:  # two threads of this process must not share one lock object at once
            lock = self.locks[name]
            if lock.held or not lock.acquire(0):
                return 0
        try:
            f = self.followers[name]
            return catch_up([f], self.sources[f.source], max_pages=PAGES_PER_MESSAGE)
        finally:
            with self.guard:
                lock.release()

    def rebuild(self, name: str, token: str) -> None:
        with self.store.read() as tx:
            done = tx.fetchone("SELECT 1 FROM projection_rebuilds WHERE token = ?", (token,))
        if done:
            log.info("rebuild %s (%s) was done before; nothing to do", name, token)
            return
        rebuild(self.store, self.logs, resolve(name))
        with self.store.write() as tx:
            tx.execute(
                "INSERT INTO projection_rebuilds (token, name, finished_at) VALUES (?, ?, ?) "
                "ON CONFLICT (token) DO NOTHING",
                (token, name, now()),
            )
        for cls in resolve(name):
            self.followers[cls.name].reset()

    def close(self) -> None:
        for lock in self.locks.values():
            lock.close()


@dataclass(frozen=True)
class Actors:
    catch_up: Any
    rebuild: Any


def declare_actors(
    broker: Any, context: Callable[[], WorkerContext] | None = None, queue: str = QUEUE
) -> Actors:
    """Bind the two actors to ``broker`` on ``queue``. ``context`` gives the worker's shared
    state; a process that only sends messages (a scheduler, a test) passes none."""
    import dramatiq

    actor: Any = dramatiq.actor  # its overloads do not type a plain function with options

    def ctx() -> WorkerContext:
        if context is None:
            raise RuntimeError("this process only sends projection messages")
        return context()

    def spotex_catch_up(name: str) -> None:
        ctx().catch_up(name)

    def spotex_rebuild(name: str, token: str) -> None:
        ctx().rebuild(name, token)

    return Actors(
        catch_up=actor(
            spotex_catch_up, broker=broker, queue_name=queue, actor_name="spotex_catch_up",
            max_retries=0, time_limit=15 * 60 * 1000,
        ),
        rebuild=actor(
            spotex_rebuild, broker=broker, queue_name=queue, actor_name="spotex_rebuild",
            max_retries=3, time_limit=24 * 3600 * 1000,
        ),
    )


def run_scheduler(
    store: ReadStore,
    logs: Logs,
    send: Callable[[str], None],
    stop: threading.Event,
    interval: float = 0.1,
    resend_after: float = 2.0,
    retry_after: float = 10.0,
) -> None:
    """Enqueue ``catch_up(name)`` for every projection behind its log, until ``stop``.

    A projection is asked again when its log's head moved since the last message, or when
    ``resend_after`` seconds passed without progress (a lost or skipped message), or — when it
    is stopped at an error — every ``retry_after`` seconds.
    """
    sent: dict[str, tuple[int, int, float]] = {}  # name → (head, position, when)
    while not stop.is_set():
        try:
            heads = {"exchange": logs.last_outcome_position(), "requests": logs.last_request_position()}
            with store.read() as tx:
                tracking = read_tracking(tx)
            t = time.monotonic()
            for name, cls in PROJECTIONS.items():
                row = tracking.get(name)
                if row is None:
                    continue
                head, position = heads[cls.source], row["position"]
                if position >= head:
                    continue
                last = sent.get(name)
                if last is not None:
                    last_head, last_position, when = last
                    if row["error"]:
                        if t - when < retry_after:
                            continue
                    elif last_head == head and last_position == position and t - when < resend_after:
                        continue  # asked already and nothing moved since
                send(name)
                sent[name] = (head, position, t)
        except Exception:
            log.exception("projection scheduler pass failed; retrying")
            stop.wait(1.0)
        stop.wait(interval)
