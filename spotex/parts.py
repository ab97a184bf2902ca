"""How ``spotex serve`` runs the engine, the read models and the webhook delivery beside the api.

On the embedded default (SQLite) they are threads of the one process: SQLite has one writer at a
time, and the files need no server. On PostgreSQL they are child processes (``spawn``): the
engine in one, the read models with the webhook delivery in another. They share nothing but the
database and a few small channels, and the api process's GIL is left to HTTP — under load the
projections' fold took a quarter of it and the engine a seventh (py-spy, docs/performance.md).

The channels, all one way:

- ``engine.wake``: set by every append (the engine's idle poll is only a fallback);
- ``background.wake``: set by the engine after each committed batch;
- the engine's positions (request and exchange log), in shared memory, for ``?wait=true``,
  ``/readyz`` and the startup wait;
- two pipes to this process: "a batch of n committed" from the engine (metrics, waiters) and
  "a pass committed, every read model is at position p" from the read models (waiters, which
  then need no query of the read store).

A child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the parent stops
it in order — the engine drains every acknowledged request, then the read models catch up — and
a child whose parent is gone (SIGKILL) stops by itself within a second. A child killed by a
signal (the kernel's OOM killer, an operator's ``kill -9``) is started again (``Child``); one
that exited by itself with an error stays stopped for an operator to look at. What the children
commit is exactly what the threads would: the engine is still the single writer of the exchange
log, and each read model writes its rows and its position in one transaction.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from engine.log import Logs
from engine.sequencer import Sequencer
from spotex.config import Settings
from spotex.wiring import STORE_UNREACHABLE, build_logs, close_logs

log = logging.getLogger("spotex.serve")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# PostgreSQL connections each child's log pools open at once (the engine's loop and its commit
# thread, the read models' one runner): the default 5 per log would triple serve's connections.
CHILD_POOL = 1
# The engine child's waits for a lost database: 1 s, doubling up to 30 s.
STORE_RETRY_FIRST, STORE_RETRY_MAX = 1.0, 30.0
# A killed child is started again after 1 s, doubling up to 30 s while it keeps being killed
# within RESTART_RESET_SECONDS of its start; how often serve looks at its children.
RESTART_FIRST, RESTART_MAX, RESTART_RESET_SECONDS = 1.0, 30.0, 60.0
SUPERVISE_EVERY = 0.2


class ProcessFlag:
    """A flag shared with the child processes (``set``, ``clear``, ``is_set``, ``wait``, as a
    ``threading.Event``), whose ``set`` never blocks.

    ``multiprocessing.Event.set`` notifies through a ``Condition`` that waits until every process
    sleeping in ``wait`` has acknowledged; one killed while it waited (a crashed child) never
    does, and ``set`` then blocks for ever. Seen: the engine stuck at its next commit, waking
    the read models, after their child was SIGKILLed (the exchange stopped matching, /readyz
    still said ok); serve's shutdown stuck on the engine's ``stop`` after that child had died.
    Here the level is a shared byte and waiters sleep on a semaphore, whose ``release`` waits for
    no one. Every wait in serve has a timeout, so a waiter that misses a token still sees the
    level at its next look.
    """

    def __init__(self, ctx: Any) -> None:
        self._level = ctx.RawValue("b", 0)
        self._tokens = ctx.Semaphore(0)

    def set(self) -> None:
        if not self._level.value:
            self._level.value = 1
            self._tokens.release()

    def clear(self) -> None:
        self._level.value = 0  # first: a set() from now on is kept (the level), not drained
        while self._tokens.acquire(False):
            pass

    def is_set(self) -> bool:
        return bool(self._level.value)

    def wait(self, timeout: float | None = None) -> bool:
        if self._level.value:
            return True
        if self._tokens.acquire(True, timeout) and self._level.value:
            self._tokens.release()  # the level stays: the next waiter wakes too
        return bool(self._level.value)


class MeteredSequencer(Sequencer):
    """The sequencer, reporting each committed batch (metrics, and waking the projections).

    Reported when the batch's commit is known to be done, not when ``step`` returns: with
    pipelining ``step`` returns while the commit is still in flight, and projections woken then
    find nothing new and back off (up to their idle limit) before they look again.
    """

    def __init__(self, logs: Logs, on_batch: Callable[[int], None]) -> None:
        super().__init__(logs)
        self.on_batch = on_batch

    def _committed(self, batch: Any, positions: Any) -> None:
        super()._committed(batch, positions)
        self.on_batch(len(batch.stored))

    def decide_the_rest(self) -> None:
        """After the loop stopped: decide every request already appended (none is lost)."""
        drained = 0
        while n := self.step():
            drained += n
        log.info("engine drained %s request(s); stopped at request position %s", drained,
                 self.request_position)


class Worker(threading.Thread):
    """A thread that records how it ended, for ``/readyz``."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._run_target = target
        self.failure: str | None = None

    def run(self) -> None:
        try:
            self._run_target()
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            log.exception("%s stopped", self.name)

    def state(self) -> str:
        if self.failure is not None:
            return f"stopped: {self.failure}"
        return "ok" if self.is_alive() else "stopped"

    def stop(self) -> None:
        """As ``Child.stop``; a thread is never started again."""


class Runs(Protocol):
    """A thread or a child process doing background work, as health and shutdown see it."""

    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def state(self) -> str: ...
    def stop(self) -> None: ...


class Flag(Protocol):
    """``threading.Event`` or ``multiprocessing.Event``."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class ProjectedHint:
    """The exchange-log position every read model has applied, as the read models last reported
    it after a pass; None once it is older than ``fresh`` seconds (then ``?wait=true`` asks the
    read store, as it does when another process keeps the read models)."""

    def __init__(self, fresh: float = 0.5) -> None:
        self.fresh = fresh
        self._last: tuple[int, float] | None = None

    def push(self, position: int | None) -> None:
        if position is not None:
            self._last = (position, time.monotonic())

    def __call__(self) -> int | None:
        last = self._last
        if last is None or time.monotonic() - last[1] > self.fresh:
            return None
        return last[0]


class BackgroundThreads:
    """The read models and the webhook delivery as threads of this process (SQLite)."""

    def __init__(self, settings: Settings, logs: Logs, store: Any) -> None:
        from projections.runner import run_in_process
        from projections.webhooks import DeliveryRunner, WebhookConfig

        self.wake, self.stop = threading.Event(), threading.Event()
        self.hint = ProjectedHint()
        self._on_pass: Callable[[int | None], None] | None = None
        self.projections = Worker("spotex-projections", lambda: run_in_process(
            settings, logs, self.stop, self.wake, on_pass=self._on_pass))
        self._delivery_stop = threading.Event()
        self._delivery = Worker("spotex-delivery", lambda: DeliveryRunner(
            store, WebhookConfig.from_tuning(settings.tuning, settings.production)).run(self._delivery_stop))

    def start(self, on_pass: Callable[[], None]) -> None:
        def passed(position: int | None) -> None:
            self.hint.push(position)
            _safely(on_pass)

        self._on_pass = passed
        self.projections.start()
        self._delivery.start()

    def stop_delivery(self) -> None:
        self._delivery_stop.set()
        self._delivery.join(timeout=30)


class Child:
    """A child process of serve, started again when something outside kills it.

    A child ended by a signal (exit code < 0: the OOM killer, ``kill -9``) lost nothing that was
    acknowledged: what it did is committed in the database or was never done, and a new one goes
    on from there — the engine recovers from the logs, the read models resume at their tracking
    rows — after ``RESTART_FIRST`` seconds, doubling up to ``RESTART_MAX`` while it keeps being
    killed within ``RESTART_RESET_SECONDS`` of its start. A child that exited by itself with an
    error stays stopped: that is a failure to look at, not one to retry past (``/readyz`` and
    the log say which and how). Nothing is started again once ``stop`` was called.

    ``target(*args, send)`` runs in the child; ``relay(receive)`` in a thread of this process
    reads what it sends until it is gone (a new pipe for each start).
    """

    def __init__(self, ctx: Any, name: str, target: Callable[..., None], args: tuple[Any, ...],
                 relay: Callable[[Any], None], before_start: Callable[[], None] | None = None) -> None:
        self._ctx, self.name, self._target, self._args = ctx, name, target, args
        self._relay, self._before_start = relay, before_start
        self._lock = threading.Lock()
        self._process: Any = None
        self._stopping = False
        self._started_at = 0.0
        self._backoff = RESTART_FIRST
        self._due: float | None = None
        self.restarts = 0

    def start(self) -> None:
        with self._lock:
            self._spawn()
        threading.Thread(target=self._supervise, name=f"{self.name}-supervisor", daemon=True).start()

    def _spawn(self) -> None:
        if self._before_start is not None:
            self._before_start()
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=self._target, name=self.name, args=(*self._args, send),
                                    daemon=True)
        process.start()
        send.close()  # only the child writes: EOF here once it is gone
        self._process, self._started_at = process, time.monotonic()
        threading.Thread(target=self._relay, args=(receive,), name=f"{self.name}-relay", daemon=True).start()

    def _supervise(self) -> None:
        while True:
            time.sleep(SUPERVISE_EVERY)
            with self._lock:
                if self._stopping:
                    return
                try:
                    self._look()
                except Exception:  # a start that failed (no memory, no file descriptors): try again
                    log.exception("%s could not be started again", self.name)

    def _look(self) -> None:
        process = self._process
        if process.is_alive() or process.exitcode is None or process.exitcode >= 0:
            return  # running, or ended by itself: not started again
        now = time.monotonic()
        if self._due is None:
            lived = now - self._started_at
            if lived >= RESTART_RESET_SECONDS:
                self._backoff = RESTART_FIRST
            self._due = now + self._backoff
            log.error("%s (pid %s) was killed by signal %s after %.0f s; starting it again in %.0f s",
                      self.name, process.pid, -process.exitcode, lived, self._backoff)
            return
        if now < self._due:
            return
        self._due = None
        self._backoff = min(self._backoff * 2, RESTART_MAX)
        self.restarts += 1
        self._spawn()
        log.warning("%s started again (pid %s; restart %s)", self.name, self._process.pid, self.restarts)

    def stop(self) -> None:
        """Start it again no more (serve is stopping)."""
        with self._lock:
            self._stopping = True

    def is_alive(self) -> bool:
        return bool(self._process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self._process.join(timeout)

    def exitcode(self) -> int | None:
        code: int | None = self._process.exitcode
        return code

    def state(self) -> str:
        """"ok" while it runs; else how it ended, and whether it is being started again."""
        process = self._process
        if process.is_alive():
            return "ok"
        code = process.exitcode
        if code in (0, None):
            return "stopped"
        again = "; starting it again" if code < 0 and not self._stopping else ""
        return f"stopped: exit code {code}{again}"


class BackgroundProcess:
    """The read models and the webhook delivery in a child process (PostgreSQL).

    The child shares nothing with this process but the database and three small channels: a
    ``wake`` event the engine sets after each committed batch, a ``stop`` event, and a pipe on
    which the child reports each committed pass with the position every read model is at (8
    bytes; empty while one is not loaded), which ``?wait=true`` waiters go by.
    It ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): it stops when this
    process has drained the engine and sets ``stop``, or when this process is gone. Killed, it
    is started again (``Child``): each read model resumes at its tracking row.
    """

    def __init__(self, settings: Settings) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.wake, self.stop = ProcessFlag(ctx), ProcessFlag(ctx)
        self.hint = ProjectedHint()
        self._on_pass: Callable[[], None] = lambda: None
        self.projections = Child(ctx, "spotex-models", _background_main,
                                 (settings, self.stop, self.wake), self._relay, before_start=self.wake.set)

    def start(self, on_pass: Callable[[], None]) -> None:
        self._on_pass = on_pass
        self.projections.start()

    def _relay(self, passes: Any) -> None:
        while True:
            try:
                message = passes.recv_bytes()
            except (EOFError, OSError):
                return
            self.hint.push(int.from_bytes(message, "little") if message else None)
            _safely(self._on_pass)

    def stop_delivery(self) -> None:
        """Delivery stops with the child, after the read models' last pass."""


def _background_main(settings: Settings, stop: Any, wake: Any, passes: Any) -> None:
    """The child of ``serve`` on PostgreSQL: every read model and the webhook delivery."""
    from projections.runner import run_in_process
    from projections.store import open_read_store
    from projections.webhooks import DeliveryRunner, WebhookConfig

    _child_setup("spotex-models", stop, (wake,))

    def on_pass(position: int | None) -> None:
        with contextlib.suppress(OSError):
            passes.send_bytes(b"" if position is None else position.to_bytes(8, "little"))

    logs = build_logs(settings, create_tables=False, pool_size=CHILD_POOL)
    store = open_read_store(settings)
    delivery_stop = threading.Event()
    delivery = Worker("spotex-delivery", lambda: DeliveryRunner(
        store, WebhookConfig.from_tuning(settings.tuning, settings.production)).run(delivery_stop))
    delivery.start()
    settle_heap()
    try:
        run_in_process(settings, logs, stop, wake, on_pass=on_pass)
    finally:
        delivery_stop.set()
        delivery.join(timeout=30)
        store.close()


class EngineThread:
    """The sequencer in a thread of this process (SQLite)."""

    def __init__(self, logs: Logs, projections_wake: Flag, on_batch: Callable[[int], None]) -> None:
        def committed(n: int) -> None:
            projections_wake.set()
            _safely(on_batch, n)

        self.wake, self._stop = threading.Event(), threading.Event()
        self.sequencer = MeteredSequencer(logs, committed)
        log.info("engine recovered at seq %s, request position %s", self.sequencer.seq,
                 self.sequencer.request_position)
        self._worker = Worker("spotex-engine",
                              lambda: self.sequencer.run(self._stop, self.wake, min_idle=0.01))

    def start(self) -> None:
        self.wake.set()
        self._worker.start()

    def positions(self) -> tuple[int, int]:
        return self.sequencer.request_position, self.sequencer.exchange_position

    def is_alive(self) -> bool:
        return self._worker.is_alive()

    def state(self) -> str:
        return self._worker.state()

    def failed(self) -> str | None:
        return self._worker.failure

    def stop_and_drain(self) -> None:
        """Stop the loop, then decide every request already appended."""
        self._stop.set()
        self._worker.join()
        if self._worker.failure is None:
            self.sequencer.decide_the_rest()


class EngineProcess:
    """The sequencer in a child process (PostgreSQL). Killed, it is started again (``Child``):
    the new engine recovers from the committed logs, as a restart of serve would."""

    def __init__(self, settings: Settings, projections_wake: Any, on_batch: Callable[[int], None]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.wake, self._stop = ProcessFlag(ctx), ProcessFlag(ctx)
        self._ready = ProcessFlag(ctx)
        # request position, exchange position; written by the child only (8-byte aligned
        # words: a reader sees each one whole)
        self._positions = ctx.RawArray("q", 2)
        self._on_batch = on_batch
        self._child = Child(
            ctx, "spotex-engine", _engine_main,
            (settings, self.wake, self._stop, self._ready, projections_wake, self._positions),
            self._relay, before_start=self._before_start)

    def _before_start(self) -> None:
        self._ready.clear()
        self.wake.set()  # a new engine looks at the requests log at once

    def start(self) -> None:
        self._child.start()
        while not self._ready.wait(0.1):  # recovery: snapshot and replay
            if not self._child.is_alive():
                return
        self.wake.set()

    def _relay(self, batches: Any) -> None:
        while True:
            try:
                n = int.from_bytes(batches.recv_bytes(), "little")
            except (EOFError, OSError):
                return
            _safely(self._on_batch, n)

    def positions(self) -> tuple[int, int]:
        return self._positions[0], self._positions[1]

    def is_alive(self) -> bool:
        return self._child.is_alive()

    def state(self) -> str:
        return self._child.state()

    def failed(self) -> str | None:
        return None if self._child.exitcode() in (0, None) else self.state()

    def stop_and_drain(self) -> None:
        """The child stops its loop, decides every request already appended and exits."""
        self._child.stop()
        self._stop.set()
        self.wake.set()
        self._child.join()


def settle_heap() -> None:
    """Move everything built at startup out of the cyclic collector's sight (``gc.freeze``).

    The app, its routes, models and libraries (and in the engine the recovered book) are
    hundreds of thousands of objects that live as long as the process; every full collection
    walked them all again — in serve's api process up to ~90 ms with the event loop stopped,
    eight times in 15 s under ``bench/api.py`` (most of the p99), in the children 30–60 ms each.
    Objects made later are collected as before.
    """
    gc.collect()
    gc.freeze()


def _safely(callback: Callable[..., None], *args: Any) -> None:
    """Run a relay's callback; a failure (the event loop already closed at shutdown) is logged
    and the relay goes on reading, so a child never blocks on a full pipe."""
    try:
        callback(*args)
    except Exception:
        log.debug("a child's report could not be passed on", exc_info=True)


def _name_process(name: str) -> None:
    """Show the child as ``name`` in ps, top and /proc/PID/comm (Linux; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def _child_setup(name: str, stop: Any, wakes: tuple[Any, ...]) -> None:
    """A child of serve: the parent stops it in order; if the parent is gone, stop."""
    _name_process(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    parent = os.getppid()

    def watch_parent() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("serve is gone; stopping")
                stop.set()
                for wake in wakes:
                    wake.set()

    threading.Thread(target=watch_parent, name="spotex-parent-watch", daemon=True).start()


def _engine_main(settings: Settings, wake: Any, stop: Any, ready: Any, projections_wake: Any,
                 positions: Any, batches: Any) -> None:
    """The engine child of ``serve`` on PostgreSQL."""
    _child_setup("spotex-engine", stop, (wake,))

    def committed(n: int) -> None:
        positions[0], positions[1] = sequencer.request_position, sequencer.exchange_position
        projections_wake.set()
        with contextlib.suppress(OSError):
            batches.send_bytes(n.to_bytes(4, "little"))

    # A lost database (a restart, a failover, connections terminated) is waited out here: the
    # engine is rebuilt from what the logs committed — exactly what a restart of the process
    # would do — as soon as the database answers again, instead of this child exiting and
    # leaving serve up with no engine. Any other error ends the child as before (/readyz
    # reports it): a request the engine cannot decide must stop it, never be retried past.
    backoff = STORE_RETRY_FIRST
    recovered = False
    while True:
        logs: Logs | None = None
        try:
            logs = build_logs(settings, create_tables=False, pool_size=CHILD_POOL)
            sequencer = MeteredSequencer(logs, committed)
            positions[0], positions[1] = sequencer.request_position, sequencer.exchange_position
            log.info("engine recovered at seq %s, request position %s", sequencer.seq,
                     sequencer.request_position)
            if not recovered:
                settle_heap()
                recovered = True
            ready.set()
            backoff = STORE_RETRY_FIRST
            try:
                sequencer.run(stop, wake, min_idle=0.01)
                sequencer.decide_the_rest()
                return
            finally:
                sequencer.close()
        except STORE_UNREACHABLE as exc:
            if stop.is_set():
                raise
            log.error("engine: the database failed (%s: %s); nothing uncommitted is kept, recovering "
                      "from the logs in %.0f s", type(exc).__name__, str(exc).strip(), backoff)
        finally:
            if logs is not None:
                close_logs(logs)
        if stop.wait(backoff):
            return
        backoff = min(backoff * 2, STORE_RETRY_MAX)

