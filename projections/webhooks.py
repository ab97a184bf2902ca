"""Webhook delivery: signed HTTP POSTs of the outbox's ``webhook`` rows, retried with backoff.

Each attempt POSTs the delivery's JSON body to the user's current endpoint with:

- ``Idempotency-Key`` (and ``X-Spotex-Delivery``): the delivery id, the same on every attempt,
  so a receiver drops duplicates — delivery is **at least once** (a crash between the receiver's
  2xx and our ``delivered`` mark sends again);
- ``X-Spotex-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
  (``verify`` checks it, with a tolerance on ``t`` against replays);
- ``X-Spotex-Attempt``: 1, 2, 3…

A 2xx marks it delivered; anything else (status, timeout, refused connection) schedules the next
attempt after an exponential backoff with jitter (``min_backoff`` doubling up to
``max_backoff``), until ``give_up_after`` seconds from dispatch mark it failed. State lives in
the ``deliveries`` table (``projections.delivery``), so a restart resumes where it was: nothing
delivered is sent again, nothing pending is lost.

Two runners: ``DeliveryRunner`` (the embedded default: a thread that dispatches and sends, the
in-process retry loop) and, in production, ``declare_webhook_actor`` — a dramatiq actor on
RabbitMQ whose retries carry the backoff — with ``run_dispatcher`` enqueueing it
(``python -m projections.webhooks`` runs both).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from projections import delivery as d
from projections.store import ReadStore

if TYPE_CHECKING:
    from spotex.config import Tuning

log = logging.getLogger("spotex.webhooks")

SIGNATURE_HEADER = "X-Spotex-Signature"
QUEUE = "spotex_webhooks"
USER_AGENT = "spotex-webhooks/1"


@dataclass(frozen=True)
class WebhookConfig:
    min_backoff: float = 1.0
    max_backoff: float = 300.0
    give_up_after: float = 3 * 86400.0
    timeout: float = 10.0
    allow_private: bool = True  # loopback and private addresses as targets (off in production)
    concurrency: int = 8
    lease: float = 60.0
    idle: float = 0.1

    @classmethod
    def from_tuning(cls, tuning: Tuning, production: bool = False) -> WebhookConfig:
        """``SPOTEX_WEBHOOK_MIN_BACKOFF`` / ``_MAX_BACKOFF`` / ``_GIVE_UP_AFTER`` / ``_TIMEOUT``
        (seconds), ``SPOTEX_WEBHOOK_ALLOW_PRIVATE`` (1/0; default 0 in production, else 1), as
        ``spotex.config.Tuning`` read and checked them; unset, this class's defaults."""

        def pick(value: float | None, default: float) -> float:
            return default if value is None else value

        private = tuning.webhook_allow_private
        return cls(
            min_backoff=pick(tuning.webhook_min_backoff, cls.min_backoff),
            max_backoff=pick(tuning.webhook_max_backoff, cls.max_backoff),
            give_up_after=pick(tuning.webhook_give_up_after, cls.give_up_after),
            timeout=pick(tuning.webhook_timeout, cls.timeout),
            allow_private=(not production) if private is None else private,
        )


# -- signatures -----------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, made within ``tolerance`` seconds."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# -- one attempt ----------------------------------------------------------------------------


def backoff(attempts: int, config: WebhookConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped, jittered."""
    cap = min(config.max_backoff, config.min_backoff * 2 ** max(0, attempts - 1))
    return float(cap / 2 + rand() * cap / 2)


def refused_target(url: str, allow_private: bool) -> str | None:
    """Why a URL may not be POSTed to (scheme, or a private address in production), or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the URL must be http:// or https:// with a host"
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return f"cannot resolve {parts.hostname}: {exc}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return f"{parts.hostname} resolves to a non-public address ({address})"
    return None


def attempt(store: ReadStore, row: Mapping[str, Any], config: WebhookConfig, client: httpx.Client,
            clock: Callable[[], float] = time.time) -> str:
    """POST one claimed delivery; ``delivered``, ``retry`` or ``failed`` (recorded in the outbox)."""
    delivery_id, attempts = row["delivery_id"], int(row["attempts"]) + 1
    endpoint = d.get_webhook(store, row["user_id"])
    if endpoint is None:
        d.mark_failed(store, delivery_id, attempts - 1, "the user removed the webhook endpoint")
        return "failed"
    refused = refused_target(endpoint.url, config.allow_private)
    if refused is not None:
        d.mark_failed(store, delivery_id, attempts - 1, refused)
        return "failed"
    body = row["payload"].encode()
    headers = {
        "Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": delivery_id,
        "X-Spotex-Delivery": delivery_id, "X-Spotex-Attempt": str(attempts),
        SIGNATURE_HEADER: sign(endpoint.secret, body, int(clock())),
    }
    try:
        response = client.post(endpoint.url, content=body, headers=headers, timeout=config.timeout)
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if error is None:
        d.mark_delivered(store, delivery_id, attempts)
        return "delivered"
    age = clock() - datetime.fromisoformat(row["created_at"]).timestamp()
    if age >= config.give_up_after:
        d.mark_failed(store, delivery_id, attempts, f"gave up after {attempts} attempts: {error}")
        return "failed"
    d.mark_retry(store, delivery_id, attempts, clock() + backoff(attempts, config), error)
    return "retry"


# -- the embedded runner: dispatch and send in one thread (the in-process retry loop) -------


class DeliveryRunner:
    """Dispatches notifications and sends due webhooks until stopped (``run`` in a thread)."""

    def __init__(self, store: ReadStore, config: WebhookConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config or WebhookConfig()
        self.clock = clock
        self.failure: str | None = None

    def step(self, client: httpx.Client, pool: ThreadPoolExecutor) -> int:
        """One pass: dispatch what is new, send what is due; returns how much it did."""
        worked = 0
        for _ in range(20):
            created = d.dispatch(self.store, clock=self.clock)
            worked += len(created)
            if not created:
                break
        due = d.claim(self.store, "webhook", limit=self.config.concurrency * 4, lease=self.config.lease,
                      clock=self.clock)
        if due:
            list(pool.map(lambda row: attempt(self.store, row, self.config, client, self.clock), due))
        return worked + len(due)

    def run(self, stop: threading.Event) -> None:
        failures = 0
        with httpx.Client(follow_redirects=False) as client, ThreadPoolExecutor(
                self.config.concurrency, thread_name_prefix="spotex-webhook") as pool:
            while not stop.is_set():
                try:
                    worked = self.step(client, pool)
                    failures = 0
                    self.failure = None
                except Exception as exc:
                    failures += 1
                    self.failure = f"{type(exc).__name__}: {exc}"
                    log.exception("notification delivery pass failed; retrying")
                    stop.wait(min(30.0, 0.5 * 2 ** failures))
                    continue
                if not worked:
                    stop.wait(self.config.idle)


# -- production: a dramatiq actor per delivery, retried by dramatiq with backoff ------------


class WebhookNotDelivered(Exception):
    """The receiver did not answer 2xx: dramatiq retries the message after a backoff."""


def declare_webhook_actor(broker: Any, store: ReadStore, config: WebhookConfig,
                          client: httpx.Client | None = None, queue_name: str = QUEUE,
                          max_retries: int | None = None) -> Any:
    """Bind ``spotex_send_webhook(delivery_id)`` to ``broker``; its retries are the backoff."""
    import dramatiq

    http = client or httpx.Client(follow_redirects=False)
    if max_retries is None:  # enough doublings, then max_backoff steps, to reach give_up_after
        max_retries = 1000

    def spotex_send_webhook(delivery_id: str) -> None:
        row = d.claim_one(store, delivery_id, lease=config.lease)
        if row is None:
            return  # delivered, failed, or being sent by another worker
        if attempt(store, row, config, http) == "retry":
            raise WebhookNotDelivered(f"delivery {delivery_id} not delivered yet")

    return dramatiq.actor(  # type: ignore[call-overload]  # dramatiq's overloads omit its options
        spotex_send_webhook, broker=broker, queue_name=queue_name, actor_name=f"{queue_name}_send",
        max_retries=max_retries, min_backoff=int(config.min_backoff * 1000),
        max_backoff=int(config.max_backoff * 1000), time_limit=int((config.timeout + 30) * 1000),
    )


def run_dispatcher(store: ReadStore, send: Callable[[str], None], stop: threading.Event,
                   config: WebhookConfig, sweep_every: float = 30.0) -> None:
    """Dispatch notifications and enqueue each new webhook delivery; re-enqueue lost ones."""
    swept = time.monotonic()
    while not stop.is_set():
        try:
            created = d.dispatch(store)
            for delivery_id, channel in created:
                if channel == "webhook":
                    send(delivery_id)
            if time.monotonic() - swept > sweep_every:
                swept = time.monotonic()
                for delivery_id in d.stale(store, "webhook", 2 * config.max_backoff + config.lease):
                    send(delivery_id)
        except Exception:
            log.exception("notification dispatch failed; retrying")
            stop.wait(1.0)
            continue
        if not created:
            stop.wait(config.idle)


def main(argv: list[str] | None = None) -> int:
    """``python -m projections.webhooks``: the delivery process (dispatcher and senders)."""
    import signal

    from projections.store import open_read_store
    from spotex.config import Settings

    p = argparse.ArgumentParser(prog="python -m projections.webhooks", description=main.__doc__)
    p.add_argument("--threads", type=int, default=8, help="concurrent webhook sends")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    settings.check_production()
    config = WebhookConfig.from_tuning(settings.tuning, settings.production)
    store = open_read_store(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if settings.broker_url:
            import dramatiq

            from projections.worker import make_broker

            broker = make_broker(settings.broker_url)
            actor = declare_webhook_actor(broker, store, config)
            worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=args.threads)
            worker.start()
            try:
                run_dispatcher(store, lambda delivery_id: actor.send(delivery_id), stop, config)
            finally:
                worker.stop()
        else:
            DeliveryRunner(store, config).run(stop)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
