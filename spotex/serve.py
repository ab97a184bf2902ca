"""``spotex serve`` (everything in one process) and ``spotex api`` (the api alone, production).

``serve`` is the embedded default: SQLite files under ``./spotex-data`` (``--data`` or
``SPOTEX_DATA_DIR``), or PostgreSQL when ``SPOTEX_DATABASE_URL`` is set (tests and benchmarks
use that). It migrates the read tables, registers the built-in users, then runs three things:

- the engine thread: ``Sequencer.run``, woken by a ``threading.Event`` that every append sets;
- the projections thread: ``projections.runner.run_in_process``, woken after each engine batch;
- uvicorn in the main thread, once the engine and the read models have taken in what was
  waiting (at most ``STARTUP_CATCH_UP_SECONDS``), so the built-in users can log in at once.

On SIGINT or SIGTERM uvicorn stops taking requests and finishes those in flight; then the
engine drains every request already appended (an acknowledged request is in the requests log
before its answer is sent, so draining the log is all it takes not to lose one), the read
models catch up for a few seconds, and the process exits 0.

``run_api_process`` (``spotex api``) serves the api alone on PostgreSQL: the engine and the
projection workers are other processes (``spotex engine``, ``spotex worker``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.log import Logs
from engine.sequencer import Sequencer
from spotex.config import ConfigError, Settings
from spotex.wiring import build_logs

log = logging.getLogger("spotex.serve")

DRAIN_PROJECTIONS_SECONDS = 10.0
STARTUP_CATCH_UP_SECONDS = 30.0


def redis_url_for(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """Where shared rate-limit buckets live: ``SPOTEX_REDIS_URL``, else a redis:// broker."""
    url = environ.get("SPOTEX_REDIS_URL") or None
    if url is None and settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        url = settings.broker_url
    return url


def build_services(settings: Settings, logs: Logs, store: Any, environ: Mapping[str, str],
                   notify: Callable[[], None] | None = None,
                   health: Callable[[], dict[str, Any]] | None = None) -> Any:
    from api.metrics import Metrics
    from api.ratelimit import build_limiter
    from api.reads import ProjectionReads
    from api.services import Services

    try:
        limiter = build_limiter(settings.rate_limits, redis_url_for(settings, environ))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    services = Services(
        settings=settings,
        logs=logs,
        reads=ProjectionReads(store, logs),
        limiter=limiter,
        metrics=Metrics(),
        health=health,
        wait_limit=float(environ.get("SPOTEX_WAIT_LIMIT") or 10.0),
    )
    if notify is not None:
        services.notify = notify
    return services


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


def _print_banner(host: str, port: int, settings: Settings, users: list[Any], demo: bool) -> None:
    where = "PostgreSQL" if settings.backend == "postgres" else f"SQLite in {settings.data_dir.resolve()}"
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    lines = [f"spotex serving on {url}  (API docs: {url}/docs)", f"data: {where}"]
    if settings.users_file is None:
        lines.append("built-in users (username/password): " + ", ".join(
            f"{u.username}/{u.password} ({', '.join(u.roles)})" for u in users))
    else:
        lines.append(f"users from {settings.users_file}: " + ", ".join(
            f"{u.username} ({', '.join(u.roles)})" for u in users))
    if demo:
        lines.append("demo: markets BTC-USDT and ETH-USDT, alice and bob funded, a market maker quoting")
    lines.append("stop with Ctrl-C (the engine drains every acknowledged request first)")
    print("\n".join(lines), flush=True)


def serve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    import uvicorn

    from api.app import create_app
    from api.bootstrap import builtin_users, register_builtin_users
    from projections.migrate import migrate_read_store
    from projections.runner import run_in_process
    from projections.store import open_read_store

    env = os.environ if environ is None else environ
    settings = Settings.from_env(env)
    if getattr(args, "data", None):
        settings = dataclasses.replace(settings, data_dir=Path(args.data))
    try:
        settings.check_production()
        users = builtin_users(settings)
    except ConfigError as exc:
        print(f"spotex serve: {exc}", file=sys.stderr)
        return 2

    logs = build_logs(settings)
    store = open_read_store(settings)
    migrate_read_store(store)

    engine_wake, projections_wake = threading.Event(), threading.Event()
    engine_stop, projections_stop, maker_stop = threading.Event(), threading.Event(), threading.Event()
    metrics_box: list[Any] = []

    def on_batch(n: int) -> None:
        projections_wake.set()
        if metrics_box:
            metrics_box[0].observe_batch(n)
            watcher = metrics_box[1].watcher
            if watcher is not None:
                watcher.kick()

    sequencer = MeteredSequencer(logs, on_batch)
    log.info("engine recovered at seq %s, request position %s", sequencer.seq, sequencer.request_position)
    # Every append wakes the engine (services.notify), so its idle poll is only a fallback.
    engine = Worker("spotex-engine", lambda: sequencer.run(engine_stop, engine_wake, min_idle=0.01))
    projections = Worker("spotex-projections",
                         lambda: run_in_process(settings, logs, projections_stop, projections_wake))

    def health() -> dict[str, Any]:
        return {"engine_thread": engine.state(), "projections_thread": projections.state()}

    services = build_services(settings, logs, store, env, notify=engine_wake.set, health=health)
    services.engine_positions = lambda: (sequencer.request_position, sequencer.exchange_position)
    metrics_box.extend((services.metrics, services))
    app = create_app(services)

    register_builtin_users(logs, users, services.clock())
    maker = None
    if getattr(args, "demo", False):
        from api import demo

        demo.set_up(logs, services.clock())
        maker = demo.MarketMaker(logs, services.clock, engine_wake.set, maker_stop)
    engine_wake.set()
    engine.start()
    projections.start()
    from projections.webhooks import DeliveryRunner, WebhookConfig

    delivery_stop = threading.Event()
    delivery = Worker("spotex-delivery", lambda: DeliveryRunner(
        store, WebhookConfig.from_env(env, settings.production)).run(delivery_stop))
    delivery.start()
    if maker is not None:
        maker.start()
    _await_startup(sequencer, engine, projections, services, logs)

    # No per-message deflate on WebSockets: it doubles memory per connection and costs CPU on
    # every broadcast frame (bench/ws.py; docs/performance.md).
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, lifespan="on", ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM while it runs and re-raises them to the handlers it found
    # when it stops: make those ours, so the drain below runs instead of a KeyboardInterrupt.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    _print_banner(args.host, args.port, settings, users, bool(getattr(args, "demo", False)))
    try:
        server.run()
    finally:
        delivery_stop.set()
        delivery.join(timeout=30)
        _shut_down(sequencer, engine, engine_stop, projections, projections_stop, projections_wake,
                   maker, maker_stop, services, logs, store)
    return 0 if engine.failure is None else 1


def _await_startup(sequencer: Sequencer, engine: Worker, projections: Worker, services: Any, logs: Logs,
                   limit: float = STARTUP_CATCH_UP_SECONDS) -> None:
    """Let the engine and the read models take in what is waiting before the api answers.

    So the built-in users printed in the banner can log in at once (a login reads the users
    read model), and a restart's reads are not stale at first. Bounded: a long backlog is
    caught up with while the api already answers (``/readyz`` shows the lag).
    """
    deadline = time.monotonic() + limit
    target = logs.last_request_position()
    while sequencer.request_position < target and engine.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not _await_projected(projections, services, logs.last_outcome_position(), deadline, 0.02):
        log.warning("still catching up after %.0fs; serving while the engine and read models follow", limit)


def _await_projected(projections: Worker, services: Any, head: int, deadline: float, pause: float) -> bool:
    """Wait until every read model has applied the exchange log up to ``head``; False if the
    deadline passed first (a stopped projections thread or an unreadable store ends the wait)."""
    while projections.is_alive() and time.monotonic() < deadline:
        try:
            if services.reads.projected_position() >= head:
                return True
        except Exception:
            return True
        time.sleep(pause)
    return time.monotonic() < deadline


def _shut_down(sequencer: Sequencer, engine: Worker, engine_stop: threading.Event,
               projections: Worker, projections_stop: threading.Event,
               projections_wake: threading.Event, maker: threading.Thread | None,
               maker_stop: threading.Event, services: Any, logs: Logs, store: Any) -> None:
    """Stop taking work, let the engine consume everything appended, let the read models follow."""
    maker_stop.set()
    if maker is not None:
        maker.join(timeout=10)
    engine_stop.set()
    engine.join()
    if engine.failure is None:
        drained = 0
        while n := sequencer.step():
            drained += n
        log.info("engine drained %s request(s); stopped at request position %s", drained,
                 sequencer.request_position)
    head = logs.last_outcome_position()
    projections_wake.set()
    _await_projected(projections, services, head, time.monotonic() + DRAIN_PROJECTIONS_SECONDS, 0.05)
    projections_stop.set()
    projections_wake.set()
    projections.join(timeout=30)
    close = getattr(store, "close", None)
    if close is not None:
        close()
    print("spotex stopped", flush=True)


def api_app() -> Any:
    """The api alone, from the environment (``uvicorn --factory spotex.serve:api_app``)."""
    from api.app import create_app
    from api.bootstrap import builtin_users, register_builtin_users
    from projections.store import open_read_store

    settings = Settings.from_env()
    settings.check_production()
    users = builtin_users(settings)
    logs = build_logs(settings, create_tables=settings.backend != "postgres")
    store = open_read_store(settings)
    services = build_services(settings, logs, store, os.environ)
    register_builtin_users(logs, users, services.clock())
    return create_app(services)


def run_api_process(args: argparse.Namespace) -> int:
    """``spotex api``: the stateless api (scaled out); no engine inside."""
    import uvicorn

    try:
        settings = Settings.from_env()
        settings.check_production()
        if settings.backend != "postgres":
            raise ConfigError("spotex api needs SPOTEX_DATABASE_URL=postgresql://... "
                              "(use spotex serve for the embedded default)")
    except ConfigError as exc:
        print(f"spotex api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run("spotex.serve:api_app", factory=True, host=args.host, port=args.port,
                workers=max(1, int(getattr(args, "workers", 1))), log_level="info",
                access_log=False, ws_per_message_deflate=False)
    return 0
