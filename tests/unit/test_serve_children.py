"""serve's children (``spotex.parts.Child``): given a child process, when something outside kills
it, then it is started again (a new process, a new pipe to this one); when it exits by itself
with an error, or after ``stop``, then it stays stopped and says how it ended."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from spotex import parts
from spotex.parts import Child


def _reports_then_sleeps(send: Any) -> None:
    send.send_bytes(str(os.getpid()).encode())
    time.sleep(60)


def _fails(send: Any) -> None:
    send.send_bytes(str(os.getpid()).encode())
    sys.exit(1)


def until(check: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "RESTART_FIRST", 0.2)
    monkeypatch.setattr(parts, "SUPERVISE_EVERY", 0.02)


@pytest.fixture
def started() -> Iterator[Callable[[Callable[[Any], None]], tuple[Child, queue.Queue[int]]]]:
    children: list[Child] = []

    def start(target: Callable[[Any], None]) -> tuple[Child, queue.Queue[int]]:
        pids: queue.Queue[int] = queue.Queue()

        def relay(receive: Any) -> None:
            while True:
                try:
                    pids.put(int(receive.recv_bytes()))
                except (EOFError, OSError):
                    return

        child = Child(multiprocessing.get_context("spawn"), "test-child", target, (), relay)
        child.start()
        children.append(child)
        return child, pids

    yield start
    for child in children:
        child.stop()
        if child.is_alive():
            child._process.kill()
        child.join(10)


def test_a_killed_child_is_started_again_with_a_new_pipe(started: Any) -> None:
    child, pids = started(_reports_then_sleeps)
    first = pids.get(timeout=30)
    os.kill(first, signal.SIGKILL)
    assert until(lambda: child.state() == "stopped: exit code -9; starting it again")
    second = pids.get(timeout=30)  # relayed from the new child, over its own pipe
    assert second != first
    assert child.state() == "ok" and child.restarts == 1


def test_a_child_killed_again_at_once_waits_longer_each_time(started: Any) -> None:
    child, pids = started(_reports_then_sleeps)
    os.kill(pids.get(timeout=30), signal.SIGKILL)
    t = time.monotonic()
    os.kill(pids.get(timeout=30), signal.SIGKILL)
    pids.get(timeout=30)
    assert child.restarts == 2
    assert child._backoff == pytest.approx(0.8)  # 0.2, then 0.4 before the second start
    assert time.monotonic() - t >= 0.4


def test_a_child_that_fails_by_itself_stays_stopped(started: Any) -> None:
    child, pids = started(_fails)
    pids.get(timeout=30)
    assert until(lambda: not child.is_alive())
    time.sleep(0.5)  # well past the first restart's wait
    assert child.state() == "stopped: exit code 1"
    assert child.restarts == 0 and pids.empty()


def test_after_stop_a_killed_child_is_not_started_again(started: Any) -> None:
    child, pids = started(_reports_then_sleeps)
    pid = pids.get(timeout=30)
    child.stop()
    os.kill(pid, signal.SIGKILL)
    assert until(lambda: not child.is_alive())
    time.sleep(0.5)
    assert child.state() == "stopped: exit code -9"
    assert child.restarts == 0 and pids.empty()
