"""Production webhook delivery: the dramatiq actor on the real RabbitMQ, retried by dramatiq.

Given notifications and a receiver that fails the first two attempts of each delivery, when the
dispatcher enqueues one ``send`` message per webhook delivery and a dramatiq worker runs them,
then each is accepted exactly once (dramatiq's retries carry the backoff), signed, and the outbox
says delivered; a message for a delivery already delivered is a no-op.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from projections import delivery as d
from projections.migrate import migrate_read_store
from projections.store import ReadStore, open_read_store
from projections.webhooks import WebhookConfig, declare_webhook_actor, run_dispatcher
from spotex.config import Settings
from tests.integration.test_delivery import Notifier, keys
from tests.integration.webhook_receiver import Receiver

pytestmark = pytest.mark.rabbitmq


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[ReadStore]:
    s = open_read_store(Settings(data_dir=tmp_path))
    migrate_read_store(s)
    try:
        yield s
    finally:
        s.close()


def test_the_dramatiq_actor_delivers_each_once_through_retries(store: ReadStore, broker_url: str) -> None:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.common import dq_name, xq_name

    queue = f"spotex_webhooks_test_{uuid.uuid4().hex[:8]}"
    broker = RabbitmqBroker(url=broker_url, confirm_delivery=True)
    config = WebhookConfig(min_backoff=0.05, max_backoff=0.5, timeout=2.0, idle=0.02)
    actor = declare_webhook_actor(broker, store, config, queue_name=queue)
    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=4)
    receiver = Receiver(fail_first=2).start()
    stop = threading.Event()
    dispatcher = threading.Thread(target=run_dispatcher, args=(store, actor.send, stop, config), daemon=True)
    try:
        receiver.secret = d.set_webhook(store, "u1", receiver.url).secret
        ids = Notifier(store).add("u1", 12)
        worker.start()
        dispatcher.start()
        receiver.wait_for(keys(ids), timeout=60)
        assert receiver.successes() == {k: 1 for k in keys(ids)}
        assert all(r.signed for r in receiver.requests)
        assert sorted(r.attempt for r in receiver.requests if r.status == 200) == [3] * 12
        # a duplicate message for a delivered delivery changes nothing
        actor.send(d.delivery_id(ids[0], "webhook"))
        broker.join(queue, timeout=10_000)
        assert receiver.successes()[d.delivery_id(ids[0], "webhook")] == 1
        assert {(r["status"], r["attempts"]) for r in d.deliveries(store, "u1")} == {("delivered", 3)}
    finally:
        stop.set()
        if dispatcher.is_alive():
            dispatcher.join(timeout=10)
        worker.stop()
        receiver.stop()
        for name in (queue, dq_name(queue), xq_name(queue)):
            try:
                broker.channel.queue_delete(name)
            except Exception:  # already gone: the channel is closed; open another
                del broker.channel
        broker.close()
