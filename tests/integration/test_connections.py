"""How many PostgreSQL connections a production process holds (docs/operations.md, "PostgreSQL
connections"): the server's ``max_connections`` (100 by default) is shared by every process.

Given a migrated PostgreSQL database, when ``spotex engine`` has started and is idle, then it
holds at most 6 connections to it — its two logs' pools of one, the LISTEN connection, and
what its recovery read — not the 13 the library's default pools of five left open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg

SPOTEX = [sys.executable, "-c", "import sys; from spotex.cli import main; sys.exit(main())"]


def connections_to(url: str) -> list[str]:
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT query FROM pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_backend_pid()", (database,)).fetchall()
    return [r[0] for r in rows]


def test_an_idle_engine_holds_few_connections(
    make_postgres_database: Callable[[], AbstractContextManager[str]], tmp_path: Path
) -> None:
    with make_postgres_database() as url:
        env = {**os.environ, "SPOTEX_DATABASE_URL": url, "SPOTEX_DATA_DIR": str(tmp_path / "data")}
        env.pop("SPOTEX_ENV", None)
        subprocess.run([*SPOTEX, "migrate"], env=env, check=True, cwd=tmp_path, capture_output=True)
        log = tmp_path / "engine.log"
        with log.open("wb") as out:
            engine = subprocess.Popen([*SPOTEX, "engine"], env=env, cwd=tmp_path, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while b"engine recovered" not in log.read_bytes():
                assert engine.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            time.sleep(1.0)  # idle: its poll and its LISTEN
            held = connections_to(url)
            assert any(q.startswith("LISTEN") for q in held), held
            assert len(held) <= 6, held
        finally:
            engine.send_signal(signal.SIGTERM)
            assert engine.wait(timeout=30) == 0, log.read_text()
        assert connections_to(url) == []
