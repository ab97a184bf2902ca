"""The production processes: the engine (single writer) and the api (stateless, scaled out)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from engine.sequencer import Sequencer
from spotex.config import Settings
from spotex.wiring import build_logs

log = logging.getLogger("spotex.engine")


def run_engine(args: argparse.Namespace) -> int:
    """Consume requests until SIGINT/SIGTERM; a committed batch is never lost or repeated."""
    settings = Settings.from_env()
    settings.check_production()
    logs = build_logs(settings, create_tables=settings.backend != "postgres")
    sequencer = Sequencer(logs)
    log.info("engine recovered at seq %s, request position %s", sequencer.seq, sequencer.request_position)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sequencer.run(stop)
    log.info("engine stopped at seq %s", sequencer.seq)
    return 0


def run_api(args: argparse.Namespace) -> int:
    from spotex.serve import run_api_process

    return run_api_process(args)
