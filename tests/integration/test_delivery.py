"""Notification delivery on the real read stores (SQLite file, PostgreSQL) with a loopback receiver.

Given notifications in the notifications read model (written here as the projection would), a
user's preferences and webhook endpoint, when the embedded delivery runner (``DeliveryRunner``)
runs, then each notification is POSTed, signed, and accepted exactly once even when the receiver
fails the first attempts or is down for a while; preferences pick kinds and channels; a restart
or a crashed sender neither loses nor repeats a delivery; two dispatchers never dispatch twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from projections import delivery as d
from projections import queries as q
from projections.migrate import migrate_read_store
from projections.store import ReadStore, open_read_store
from projections.webhooks import DeliveryRunner, WebhookConfig
from spotex.config import Settings
from tests.integration.webhook_receiver import Receiver

FAST = WebhookConfig(min_backoff=0.05, max_backoff=0.4, timeout=2.0, idle=0.02)
KINDS = ("order_filled", "order_cancelled", "deposit_credited", "withdrawal_failed")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReadStore]:
    if request.param == "postgres":
        maker = request.getfixturevalue("make_postgres_database")
        with maker() as url:
            s = open_read_store(Settings(database_url=url))
            migrate_read_store(s)
            try:
                yield s
            finally:
                s.close()
    else:
        s = open_read_store(Settings(data_dir=tmp_path))
        migrate_read_store(s)
        try:
            yield s
        finally:
            s.close()


class Notifier:
    """Writes notification rows as the notifications projection does (ids 1, 2, 3…)."""

    def __init__(self, store: ReadStore) -> None:
        self.store = store
        self.last = 0

    def add(self, user_id: str, n: int, kinds: tuple[str, ...] = KINDS) -> list[int]:
        rows = []
        for i in range(n):
            self.last += 1
            kind = kinds[i % len(kinds)]
            rows.append((self.last, user_id, kind, json.dumps({"order_id": f"o-{self.last}", "kind": kind}),
                         f"2026-01-01T00:00:{self.last % 60:02d}+00:00", 100 + self.last))
        with self.store.write() as tx:
            tx.executemany("INSERT INTO notifications (notification_id, user_id, kind, data, time, position) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
        return [r[0] for r in rows]


@contextmanager
def running(store: ReadStore, config: WebhookConfig = FAST) -> Iterator[DeliveryRunner]:
    runner = DeliveryRunner(store, config)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def keys(ids: list[int]) -> set[str]:
    return {d.delivery_id(i, "webhook") for i in ids}


def test_each_notification_is_delivered_once_signed_despite_failing_first_attempts(store: ReadStore) -> None:
    receiver = Receiver(fail_first=2).start()
    try:
        receiver.secret = d.set_webhook(store, "u1", receiver.url).secret
        ids = Notifier(store).add("u1", 20)
        with running(store):
            receiver.wait_for(keys(ids), timeout=30)
        assert receiver.successes() == {k: 1 for k in keys(ids)}
        assert all(r.signed for r in receiver.requests)
        assert sorted(r.attempt for r in receiver.requests if r.status == 200) == [3] * 20
        bodies = {b["notification_id"]: b for b in receiver.accepted.values()}
        assert sorted(bodies) == ids
        assert bodies[ids[0]]["kind"] == "order_filled" and bodies[ids[0]]["user_id"] == "u1"
        assert bodies[ids[0]]["data"] == {"order_id": f"o-{ids[0]}", "kind": "order_filled"}
        rows = d.deliveries(store, "u1")
        assert {(r["status"], r["attempts"]) for r in rows} == {("delivered", 3)}
        assert d.dispatched_position(store) == ids[-1]
    finally:
        receiver.stop()


def test_preferences_choose_kinds_and_channels(store: ReadStore) -> None:
    receiver = Receiver().start()
    try:
        receiver.secret = d.set_webhook(store, "u2", receiver.url).secret
        assert q.preferences(store, "u2")["channels"] == ["ws", "webhook"]  # the endpoint switched it on
        q.set_preferences(store, "u2", ["order_filled"], ["ws", "email", "webhook"])
        notifier = Notifier(store)
        wanted = notifier.add("u2", 1, ("order_filled",))
        notifier.add("u2", 3, ("order_cancelled", "deposit_credited", "withdrawal_failed"))
        notifier.add("u3", 4)  # default preferences (ws only), no webhook: nothing queued
        with running(store):
            receiver.wait_for(keys(wanted), timeout=20)
            time.sleep(0.3)
        assert set(receiver.accepted) == keys(wanted)
        rows = d.deliveries(store)
        assert [(r["notification_id"], r["channel"]) for r in rows] == [(wanted[0], "email"),
                                                                       (wanted[0], "webhook")]
        email = rows[0]
        assert email["status"] == "pending" and email["target"] is None  # for a provider to claim
        assert json.loads(email["payload"])["kind"] == "order_filled"
        claimed = d.claim(store, "email", lease=30)
        assert [c["delivery_id"] for c in claimed] == [email["delivery_id"]]
        assert d.claim(store, "email") == []  # leased
        d.mark_delivered(store, email["delivery_id"], 1)
        d.delete_webhook(store, "u2")
        assert q.preferences(store, "u2")["channels"] == ["ws", "email"]
    finally:
        receiver.stop()


@pytest.mark.parametrize("down", [pytest.param(3.0, id="3s"),
                                  pytest.param(60.0, id="60s", marks=pytest.mark.slow)])
def test_a_receiver_down_for_a_while_gets_everything_afterwards(store: ReadStore, down: float) -> None:
    receiver = Receiver().start()
    receiver.secret = d.set_webhook(store, "u4", receiver.url).secret
    receiver.stop()  # down: connections refused
    config = WebhookConfig(min_backoff=0.1, max_backoff=down / 3, timeout=2.0, idle=0.05)
    try:
        ids = Notifier(store).add("u4", 15)
        with running(store, config):
            time.sleep(down)
            assert receiver.requests == []
            failed = d.deliveries(store, "u4")
            assert all(r["status"] == "pending" and r["attempts"] >= 1 for r in failed)
            assert all("ConnectError" in (r["last_error"] or "") for r in failed)
            receiver.start()  # back, on the same port
            receiver.wait_for(keys(ids), timeout=down / 3 + 15)
        assert receiver.successes() == {k: 1 for k in keys(ids)}
    finally:
        receiver.stop()


def test_a_restart_or_a_crashed_sender_neither_loses_nor_repeats(store: ReadStore) -> None:
    receiver = Receiver(delay=0.02).start()
    try:
        receiver.secret = d.set_webhook(store, "u5", receiver.url).secret
        notifier = Notifier(store)
        first = notifier.add("u5", 40)
        with running(store):
            deadline = time.monotonic() + 20
            while len(receiver.accepted) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        # stopped part-way; a sender "crashes" holding claims it will never finish
        crashed = d.claim(store, "webhook", limit=5, lease=1.0)
        second = notifier.add("u5", 10)
        with running(store):
            receiver.wait_for(keys(first + second), timeout=30)
        assert receiver.successes() == {k: 1 for k in keys(first + second)}
        assert {c["delivery_id"] for c in crashed} <= set(receiver.accepted)
        assert len(d.deliveries(store, "u5")) == 50
        assert d.dispatched_position(store) == second[-1]
    finally:
        receiver.stop()


def test_two_dispatchers_never_dispatch_a_notification_twice(store: ReadStore) -> None:
    d.set_webhook(store, "u6", "http://127.0.0.1:9/unused")
    ids = Notifier(store).add("u6", 300)
    created: list[list[tuple[str, str]]] = [[], []]
    errors: list[BaseException] = []

    def dispatcher(i: int) -> None:
        try:
            while d.dispatched_position(store) < ids[-1]:
                created[i].extend(d.dispatch(store, limit=7))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    both: list[Any] = created[0] + created[1]
    assert len(both) == len(set(both)) == 300
    assert len(d.deliveries(store, "u6")) == 300
