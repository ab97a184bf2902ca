"""``spotex engine`` refuses to go on, with a clear message and its own exit code, when it must.

- A request the engine cannot decide: exit 4 (``EngineHalted``), everything before that request's
  batch committed, nothing from it on, and the next start stops at the same request.
- An exchange log whose chain is broken: exit 3 (``CorruptLog``) before consuming anything.
- Bad tuning variables: exit 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_engine_workload import Writer, check_exchange_log, open_logs

from engine.exchange import Exchange, RequestRecord
from engine.log import EXCHANGE_STREAM_ID
from engine.sequencer import Sequencer
from spotex.config import Settings
from spotex.processes import EXIT_CONFIG, EXIT_CORRUPT, EXIT_HALTED, run_engine


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """SQLite under tmp_path, named by the environment as production would name it."""
    for name in ("SPOTEX_DATABASE_URL", "SPOTEX_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPOTEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPOTEX_ENGINE_BATCH_SIZE", "25")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield Settings(data_dir=tmp_path / "data")
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_a_request_the_engine_cannot_decide_stops_it_with_exit_4_and_it_is_never_skipped(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logs = open_logs(embedded)
    writer = Writer(logs, seed=8)
    writer.setup()
    writer.write(200)
    bad = list(logs.iter_requests())[140]
    real = Exchange.execute

    def execute(self: Exchange, request: RequestRecord) -> list[dict[str, Any]]:
        if request.request_id == bad.request_id:
            raise RuntimeError("a bug in a handler")
        return real(self, request)

    monkeypatch.setattr(Exchange, "execute", execute)
    for _ in range(2):  # and again after a restart: it stops at the same request
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="spotex.engine"):
            assert run_engine(argparse.Namespace()) == EXIT_HALTED
        assert logs.engine_position() == 125  # batches of 25: the one holding position 141 is not in
        assert f"request at position {bad.position}" in caplog.text
        assert "never skips one" in caplog.text

    monkeypatch.setattr(Exchange, "execute", real)
    seq = Sequencer(logs)
    while seq.step():
        pass
    check_exchange_log(logs)


def test_a_broken_chain_stops_the_engine_with_exit_3(
    embedded: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    logs = open_logs(embedded)
    writer = Writer(logs, seed=9)
    writer.setup()
    writer.write(60)
    seq = Sequencer(logs, batch_size=30)
    while seq.step():
        pass
    recorder: Any = logs.exchange
    (stored,) = recorder.select_events(EXCHANGE_STREAM_ID, gt=39, lte=40)
    tampered = stored.state.replace(b'"prev_hash":"', b'"prev_hash":"f')
    with recorder.datastore.transaction(commit=True) as curs:  # outcome 40's link, as a disk fault
        curs.execute(
            f"UPDATE {recorder.events_table_name} SET state = ? WHERE originator_version = 40", (tampered,)
        )
    with caplog.at_level(logging.INFO, logger="spotex.engine"):
        assert run_engine(argparse.Namespace()) == EXIT_CORRUPT
    assert "the exchange log is corrupt" in caplog.text
    assert "seq 40" in caplog.text


@pytest.mark.parametrize("name", ["SPOTEX_ENGINE_BATCH_SIZE", "SPOTEX_ENGINE_SNAPSHOT_EVERY"])
@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_tuning_is_a_configuration_error_exit_2(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="spotex.engine"):
        assert run_engine(argparse.Namespace()) == EXIT_CONFIG
    assert name in caplog.text
