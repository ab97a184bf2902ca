"""``spotex serve`` (everything in one command) and ``spotex api`` (the api alone, production).

``serve`` is the embedded default: SQLite files under ``./spotex-data`` (``--data`` or
``SPOTEX_DATA_DIR``), or PostgreSQL when ``SPOTEX_DATABASE_URL`` is set (tests and benchmarks
use that). It migrates the read tables, registers the built-in users, then runs two things
beside uvicorn (``spotex.parts``): the engine (``Sequencer.run``, woken by every append), the
read models with the webhook delivery (``projections.runner.run_in_process``, woken after each
engine batch) — threads of this process on SQLite, child processes on PostgreSQL — and serves
once the engine and the read models have taken in what was waiting (at most
``STARTUP_CATCH_UP_SECONDS``), so the built-in users can log in at once.

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
from spotex.config import ConfigError, Settings
from spotex.parts import BackgroundProcess, BackgroundThreads, EngineProcess, EngineThread, Runs, settle_heap
from spotex.wiring import build_logs

log = logging.getLogger("spotex.serve")

DRAIN_PROJECTIONS_SECONDS = 10.0
STARTUP_CATCH_UP_SECONDS = 30.0


def redis_url_for(settings: Settings) -> str | None:
    """Where shared rate-limit buckets live: ``SPOTEX_REDIS_URL``, else a redis:// broker."""
    url = settings.tuning.redis_url
    if url is None and settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        url = settings.broker_url
    return url


def build_services(settings: Settings, logs: Logs, store: Any,
                   notify: Callable[[], None] | None = None,
                   health: Callable[[], dict[str, Any]] | None = None) -> Any:
    from api.metrics import Metrics
    from api.ratelimit import build_limiter
    from api.reads import ProjectionReads
    from api.services import Services

    try:
        limiter = build_limiter(settings.rate_limits, redis_url_for(settings))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    services = Services(
        settings=settings,
        logs=logs,
        reads=ProjectionReads(store, logs),
        limiter=limiter,
        metrics=Metrics(),
        health=health,
        wait_limit=settings.tuning.wait_limit,
    )
    if notify is not None:
        services.notify = notify
    return services


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

    maker_stop = threading.Event()
    metrics_box: list[Any] = []

    def on_batch(n: int) -> None:
        if metrics_box:
            metrics_box[0].observe_batch(n)
            watcher = metrics_box[1].watcher
            if watcher is not None:
                watcher.kick()

    engine: EngineThread | EngineProcess
    background: BackgroundThreads | BackgroundProcess
    if settings.backend == "postgres":
        # The engine, and the read models with the webhook delivery, in child processes: on the
        # server database they share nothing but it, and this process's GIL is left to HTTP
        # (under load the projections' fold took a quarter of it and the engine a seventh).
        background = BackgroundProcess(settings)
        engine = EngineProcess(settings, background.wake, on_batch)
    else:
        background = BackgroundThreads(settings, logs, store)
        engine = EngineThread(logs, background.wake, on_batch)
    projections = background.projections

    def health() -> dict[str, Any]:
        return {"engine_thread": engine.state(), "projections_thread": projections.state()}

    # Every append wakes the engine (services.notify), so its idle poll is only a fallback.
    services = build_services(settings, logs, store, notify=engine.wake.set, health=health)
    services.engine_positions = engine.positions
    services.projected_hint = background.hint
    metrics_box.extend((services.metrics, services))
    app = create_app(services)

    register_builtin_users(logs, users, services.clock())
    maker = None
    if getattr(args, "demo", False):
        from api import demo

        demo.set_up(logs, services.clock())
        maker = demo.MarketMaker(logs, services.clock, engine.wake.set, maker_stop)
    engine.start()
    background.start(on_pass=lambda: services.watcher.kick() if services.watcher is not None else None)
    if maker is not None:
        maker.start()
    _await_startup(engine, projections, services, logs)
    settle_heap()

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
        background.stop_delivery()
        _shut_down(engine, background, maker, maker_stop, services, logs, store)
    return 0 if engine.failed() is None else 1


def _await_startup(engine: EngineThread | EngineProcess, projections: Runs, services: Any, logs: Logs,
                   limit: float = STARTUP_CATCH_UP_SECONDS) -> None:
    """Let the engine and the read models take in what is waiting before the api answers.

    So the built-in users printed in the banner can log in at once (a login reads the users
    read model), and a restart's reads are not stale at first. Bounded: a long backlog is
    caught up with while the api already answers (``/readyz`` shows the lag).
    """
    deadline = time.monotonic() + limit
    target = logs.last_request_position()
    while engine.positions()[0] < target and engine.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not _await_projected(projections, services, logs.last_outcome_position(), deadline, 0.02):
        log.warning("still catching up after %.0fs; serving while the engine and read models follow", limit)


def _await_projected(projections: Runs, services: Any, head: int, deadline: float, pause: float) -> bool:
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


def _shut_down(engine: EngineThread | EngineProcess, background: BackgroundThreads | BackgroundProcess,
               maker: threading.Thread | None, maker_stop: threading.Event, services: Any, logs: Logs,
               store: Any) -> None:
    """Stop taking work, let the engine consume everything appended, let the read models follow."""
    maker_stop.set()
    if maker is not None:
        maker.join(timeout=10)
    engine.stop_and_drain()
    projections, projections_stop, projections_wake = background.projections, background.stop, background.wake
    head = logs.last_outcome_position()
    projections_wake.set()
    _await_projected(projections, services, head, time.monotonic() + DRAIN_PROJECTIONS_SECONDS, 0.05)
    projections.stop()  # not started again from here on
    projections_stop.set()
    projections_wake.set()
    projections.join(timeout=30)
    if projections.is_alive():
        log.warning("the read models did not stop within 30 s")
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
    services = build_services(settings, logs, store)
    register_builtin_users(logs, users, services.clock())
    app = create_app(services)
    settle_heap()
    return app


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
