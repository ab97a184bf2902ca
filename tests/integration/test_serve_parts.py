"""What serve's read models report after each pass, and how ``?wait=true`` uses it.

Given a busy flow decided by the real engine, when the in-process runner catches up, then the
position it reports after its passes is exactly the projected position the read store gives
(on SQLite and PostgreSQL); a report is trusted only while fresh.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from api.reads import ProjectionReads
from engine.log import Logs
from projections.runner import run_in_process
from projections.store import ReadStore
from projections.users import Users
from spotex.config import Settings
from spotex.parts import ProjectedHint
from tests.integration.conftest import ExchangeFlow
from tests.integration.test_projections_ops import patches_a_projection_class


def test_the_runner_reports_the_projected_position_the_read_store_gives(
        opened: tuple[Settings, Logs, ReadStore]) -> None:
    settings, logs, store = opened
    flow = ExchangeFlow(logs, seed=11, step=timedelta(minutes=1))
    flow.bootstrap()
    flow.trade(120)
    head = flow.run()
    reported: list[int | None] = []
    stop = threading.Event()

    def on_pass(position: int | None) -> None:
        reported.append(position)
        if position == head:
            stop.set()

    runner = threading.Thread(target=run_in_process, args=(settings, logs, stop),
                              kwargs={"store": store, "batch": 50, "on_pass": on_pass})
    runner.start()
    runner.join(timeout=120)
    stop.set()
    runner.join()
    assert reported and reported[-1] == head
    assert ProjectionReads(store, logs).projected_position() == head
    known = [p for p in reported if p is not None]
    assert known == sorted(known)  # passes in batches of 50: the reports climb to the head


def test_a_report_is_trusted_only_while_fresh() -> None:
    hint = ProjectedHint(fresh=0.2)
    assert hint() is None  # nothing reported: ask the read store
    hint.push(None)
    assert hint() is None  # a pass with a read model not loaded yet says nothing
    hint.push(42)
    assert hint() == 42
    time.sleep(0.3)
    assert hint() is None  # stale: ask the read store again


@patches_a_projection_class
def test_a_read_model_stopped_at_a_failing_event_holds_the_report_back(
        opened: tuple[Settings, Logs, ReadStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Given one read model failing at an event, the report stays where that model stopped,
    as the read store's projected position does, while the others reach the head."""
    settings, logs, store = opened
    flow = ExchangeFlow(logs, seed=12, step=timedelta(minutes=1))
    flow.bootstrap()
    flow.trade(60)
    head = flow.run()
    bad = next(o.position for o in logs.iter_outcomes()
               if any(f["type"] == "UserRegistered" and f["username"] == "carol" for f in o.facts))
    real_apply = Users.apply

    def boom(self: Users, o: Any) -> None:
        if o.position == bad:
            raise RuntimeError("boom")
        real_apply(self, o)

    monkeypatch.setattr(Users, "apply", boom)
    reported: list[int | None] = []
    stop = threading.Event()

    def on_pass(position: int | None) -> None:
        reported.append(position)
        if ProjectionReads(store, logs).status()["orders"]["lag"] == 0:
            stop.set()

    runner = threading.Thread(target=run_in_process, args=(settings, logs, stop),
                              kwargs={"store": store, "batch": 50, "on_pass": on_pass, "retry_after": 60})
    runner.start()
    runner.join(timeout=120)
    stop.set()
    runner.join()
    projected = ProjectionReads(store, logs).projected_position()
    assert projected < bad < head
    assert reported[-1] == projected
