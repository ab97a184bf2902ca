"""The production processes: the engine (single writer) and the api (stateless, scaled out).

``spotex engine`` exit codes: 0 stopped by SIGTERM/SIGINT after committing the batch in flight;
1 an unexpected error (the store unreachable, …): restart it; 2 the configuration is invalid;
3 ``CorruptLog``: the exchange log does not continue its hash chain or its tracking position;
4 ``EngineHalted``: a request made the engine fail; it stopped before that request and will stop
there again (it never skips one) until the cause is fixed; 5 another engine wrote the exchange
log (the stream's version fenced this one): run exactly one engine.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType

from eventsourcing.persistence import IntegrityError

from engine.sequencer import CorruptLog, EngineHalted, Sequencer
from spotex.config import ConfigError, Settings
from spotex.wiring import build_logs

log = logging.getLogger("spotex.engine")

EXIT_ERROR, EXIT_CONFIG, EXIT_CORRUPT, EXIT_HALTED, EXIT_FENCED = 1, 2, 3, 4, 5
# PostgreSQL connections each of the engine's log pools opens (its loop and its commit thread use
# them; the pool grows by up to 4 more under a burst): the library's default of 5 per log left 13
# connections open for one writer (docs/operations.md, "PostgreSQL connections").
ENGINE_POOL = 1


def engine_options(settings: Settings) -> dict[str, int | bool]:
    """The engine's tuning (``Settings.tuning``): ``SPOTEX_ENGINE_BATCH_SIZE`` (default 1,000
    requests per commit), ``SPOTEX_ENGINE_SNAPSHOT_EVERY`` (100,000 outcomes),
    ``SPOTEX_ENGINE_CHECK_INVARIANTS=1`` (check every batch before committing it: for tests and
    debugging, it costs)."""
    t = settings.tuning
    return {
        "batch_size": t.engine_batch_size,
        "snapshot_every": t.engine_snapshot_every,
        "check_invariants": t.engine_check_invariants,
    }


def listen_for_requests(settings: Settings, channel: str, wake: threading.Event, stop: threading.Event
                        ) -> threading.Thread:
    """Set ``wake`` on every NOTIFY of the requests table (the library sends one per append).

    So the engine starts on a request as soon as an api process committed it, instead of at its
    next idle poll; the poll stays as the fallback (a lost connection is retried every second).
    """
    import psycopg
    from psycopg import sql

    assert settings.database_url is not None

    def listen() -> None:
        while not stop.is_set():
            try:
                with psycopg.connect(settings.database_url, autocommit=True) as conn:  # type: ignore[arg-type]
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    wake.set()  # whatever came before LISTEN
                    while not stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            wake.set()
            except psycopg.Error as exc:
                log.warning("engine: listening for requests failed (%s); polling until it reconnects", exc)
                stop.wait(1.0)

    thread = threading.Thread(target=listen, name="spotex-engine-listen", daemon=True)
    thread.start()
    return thread


def run_engine(args: argparse.Namespace) -> int:
    """Consume requests until SIGINT/SIGTERM; a committed batch is never lost or repeated.

    On a signal the batch being decided is committed, then the process exits 0. Recovery
    (newest valid snapshot + the outcomes after it) is logged with its position.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("%s: finishing the batch in flight, then stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        settings = Settings.from_env()
        settings.check_production()
        options = engine_options(settings)
    except ConfigError as exc:
        log.critical("engine: invalid configuration: %s", exc)
        return EXIT_CONFIG
    sequencer: Sequencer | None = None
    try:
        logs = build_logs(settings, create_tables=settings.backend != "postgres", pool_size=ENGINE_POOL)
        started = time.perf_counter()
        sequencer = Sequencer(logs, pipeline=True, **options)  # type: ignore[arg-type]
        waiting = logs.last_request_position() - sequencer.request_position
        log.info(
            "engine recovered in %.2fs from %s: seq %s, request position %s, exchange position %s; "
            "%s requests waiting (batch %s, snapshot every %s)",
            time.perf_counter() - started,
            f"the snapshot at seq {sequencer.snapshot_seq}" if sequencer.snapshot_seq else "position 0",
            sequencer.seq,
            sequencer.request_position,
            sequencer.exchange_position,
            max(waiting, 0),
            options["batch_size"],
            options["snapshot_every"],
        )
        wake = threading.Event()
        channel = getattr(logs.requests, "channel_name", None)
        listening = settings.backend == "postgres" and isinstance(channel, str)
        if listening:
            listen_for_requests(settings, channel, wake, stop)  # type: ignore[arg-type]
        sequencer.run(stop, wake, max_idle=0.02, min_idle=0.01 if listening else 0.001)
    except CorruptLog as exc:
        log.critical("engine: the exchange log is corrupt, refusing to go on: %s", exc)
        return EXIT_CORRUPT
    except EngineHalted as exc:
        log.critical(
            "engine halted: %s. Nothing from that request on was applied; the engine will stop at "
            "the same request until the cause is fixed (it never skips one).",
            exc,
        )
        return EXIT_HALTED
    except IntegrityError as exc:
        log.critical(
            "engine: another engine committed to the exchange log first (%s); this one recovered "
            "and stops without writing. Run exactly one engine. (Rarely, the same error follows a "
            "commit whose answer was lost with the connection; a restart then simply continues.)",
            exc,
        )
        return EXIT_FENCED
    except Exception:
        log.exception("engine: unexpected error; nothing uncommitted was kept, restart it")
        return EXIT_ERROR
    finally:
        if sequencer is not None:
            sequencer.close()
    log.info(
        "engine stopped cleanly at seq %s, request position %s", sequencer.seq, sequencer.request_position
    )
    return 0


def run_api(args: argparse.Namespace) -> int:
    from spotex.serve import run_api_process

    return run_api_process(args)
