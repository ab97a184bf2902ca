"""Crash safety of ``spotex engine`` on SQLite and on the real PostgreSQL.

A writer thread appends requests one transaction each (as api replicas do) while the engine runs
as a subprocess; the engine is killed with SIGKILL at random moments (while deciding, during a
commit, during recovery, while saving a snapshot) and restarted, again and again; some stops are
SIGTERMs, which must exit 0 after committing the batch in flight. At the end every request has
exactly one outcome (by id and position, in order, no gap, no duplicate), the chain is
continuous, the invariants hold and the state equals a replay of the exchange log from 0 and a
fresh re-execution of the requests log.

The short variant runs in CI; ``SPOTEX_SLOW=1`` runs the long one (``-s`` prints the figures).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from test_engine_workload import (
    BackgroundWriter,
    EngineProcess,
    StoreFactory,
    Writer,
    check_exchange_log,
    check_state,
    open_logs,
    store,  # noqa: F401 - the fixture
    wait_until,
)

ENGINE_ENV = {
    "SPOTEX_ENGINE_BATCH_SIZE": "40",
    "SPOTEX_ENGINE_SNAPSHOT_EVERY": "300",
    "SPOTEX_ENGINE_CHECK_INVARIANTS": "1",
}


def crash_run(make_store: StoreFactory, tmp_path: Path, *, requests: int, kills: int, seed: int) -> None:
    rnd = random.Random(seed)
    started = time.monotonic()
    with make_store() as settings:
        logs = open_logs(settings)
        writer = Writer(logs, seed=seed)
        writer.setup()
        # Paced so that writing spans the stops: the engine follows a live writer.
        background = BackgroundWriter(writer, requests, pause=kills * 1.0 / requests)
        background.start()
        log_path = tmp_path / "engine.log"
        kill_count = term_count = 0
        progress = []
        for i in range(kills):
            before = logs.engine_position()
            engine = EngineProcess(settings, log_path, **ENGINE_ENV)
            # Random moments: some during start-up and recovery, most while it works through the
            # backlog the writer made meanwhile (deciding, committing, saving a snapshot).
            if i % 6 == 0:
                time.sleep(rnd.uniform(0.05, 1.5))
                engine.kill()
                kill_count += 1
            elif i % 6 == 5:
                engine.wait_ready()
                time.sleep(rnd.uniform(0, 1.0))
                code = engine.terminate()
                assert code == 0, f"SIGTERM must stop it cleanly, exit {code}:\n{engine.output()[-3000:]}"
                term_count += 1
            else:
                engine.wait_ready()
                time.sleep(rnd.uniform(0, 1.2))
                assert engine.kill() == -9
                kill_count += 1
            progress.append(logs.engine_position() - before)
            assert background.error is None, background.error
        background.join(timeout=600)
        assert background.error is None, background.error
        assert not background.is_alive()

        # The last engine catches up with everything and stops on SIGTERM.
        engine = EngineProcess(settings, log_path, **ENGINE_ENV)
        engine.wait_ready()
        last = logs.last_request_position()
        wait_until(lambda: logs.engine_position() == last, 300, "the engine to catch up")
        assert engine.terminate() == 0, engine.output()[-3000:]
        output = engine.output()
        assert "engine recovered" in output and "engine stopped cleanly" in output

        outcomes = check_exchange_log(logs)
        assert outcomes == writer.appended
        check_state(logs)
        assert sum(1 for p in progress if p > 0) >= kills // 3, f"the engine hardly ran: {progress}"
        everything = log_path.read_text(errors="replace")
        print(
            f"\n[crash {settings.backend}] {kill_count} SIGKILLs + {term_count} SIGTERMs, "
            f"{outcomes} requests, each exactly once, in {time.monotonic() - started:.1f}s; "
            f"{everything.count('engine recovered')} recoveries "
            f"({everything.count('from the snapshot at seq')} from a snapshot), "
            f"{everything.count('INFO spotex.engine: snapshot at seq')} snapshots saved; "
            f"outcomes committed between stops: {progress}"
        )


def test_engine_survives_sigkill_at_random_points(store: StoreFactory, tmp_path: Path) -> None:  # noqa: F811
    crash_run(store, tmp_path, requests=600, kills=6, seed=11)


@pytest.mark.slow
def test_engine_survives_many_sigkills_long(store: StoreFactory, tmp_path: Path) -> None:  # noqa: F811
    crash_run(store, tmp_path, requests=15_000, kills=60, seed=12)
