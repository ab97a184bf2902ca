"""docs/events.md's standard-library chain check works when pasted, on both stores.

Given a flow recorded by the real engine (SQLite, and the real PostgreSQL), when the page's
```python block runs (its SQLite path pointed at the recorded store), then it prints the hash of
the last outcome; and when one stored outcome is changed, deleted, or two are swapped by SQL, the
same code stops at the first seq the change touches. The code is the page's, not spotex's: it
imports nothing from the project, so it proves the documented rule is the rule the engine used.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from spotex.config import Settings
from tests.integration.test_audit_cli import record

PAGE = Path(__file__).resolve().parents[2] / "docs" / "events.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
SQLITE_PATH = "spotex-data/exchange.sqlite"


def page_block() -> str:
    blocks = BLOCK.findall(PAGE.read_text())
    assert len(blocks) == 1, "events.md has one python block: the chain check"
    assert SQLITE_PATH in blocks[0]
    return str(blocks[0])


def check_chain() -> Callable[[Iterable[tuple[int, bytes]]], str]:
    """The page's ``check_chain``, defined by the page's own code (without its last lines)."""
    namespace: dict[str, Any] = {}
    exec(page_block().split("\ndb = ", 1)[0], namespace)
    return namespace["check_chain"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sqlite_flow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    data = tmp_path_factory.mktemp("events-doc")
    live = record(Settings(data_dir=data), count=60)
    return data, len(live)


def stored_hash(state: bytes) -> str:
    return str(json.loads(state)["hash"])


def test_the_pasted_block_prints_the_head_of_the_recorded_chain(sqlite_flow: tuple[Path, int]) -> None:
    data, outcomes = sqlite_flow
    script = page_block().replace(SQLITE_PATH, str(data / "exchange.sqlite"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(data / "exchange.sqlite") as db:
        rows = db.execute("SELECT originator_version, state FROM stored_events ORDER BY rowid").fetchall()
    assert len(rows) == outcomes > 50
    assert done.stdout.strip() == stored_hash(rows[-1][1])


def tampered(rows: list[tuple[int, bytes]], how: str) -> tuple[list[tuple[int, bytes]], int, str]:
    """The rows with one change made as SQL would make it; the seq the check must stop at."""
    rows = list(rows)
    i = next(i for i, (_, s) in enumerate(rows) if b"TradeExecuted" in s)
    seq = rows[i][0]
    if how == "changed":
        state = json.loads(rows[i][1])
        trade = next(f for f in state["facts"] if f["type"] == "TradeExecuted")
        trade["quantity"] += 1
        rows[i] = (seq, json.dumps(state).encode())
        return rows, seq, "does not hash"
    if how == "deleted":
        del rows[i]
        return rows, rows[i][0], "prev_hash"
    assert how == "swapped"  # two outcomes' contents exchanged between their positions
    rows[i], rows[i + 1] = (seq, rows[i + 1][1]), (rows[i + 1][0], rows[i][1])
    return rows, seq, "prev_hash"


@pytest.mark.parametrize("how", ["changed", "deleted", "swapped"])
def test_the_block_stops_at_the_first_tampered_seq_on_sqlite(
    sqlite_flow: tuple[Path, int], how: str
) -> None:
    with sqlite3.connect(sqlite_flow[0] / "exchange.sqlite") as db:
        rows = db.execute("SELECT originator_version, state FROM stored_events ORDER BY rowid").fetchall()
    check = check_chain()
    assert check(rows) == stored_hash(rows[-1][1])
    bad, seq, why = tampered(rows, how)
    with pytest.raises(SystemExit, match=rf"^seq {seq}: .*{why}"):
        check(bad)


@pytest.mark.postgres
def test_the_block_checks_the_postgresql_log_and_a_tampered_one(
    make_postgres_database: Callable[[], AbstractContextManager[str]],
) -> None:
    check = check_chain()
    with make_postgres_database() as url:
        live = record(Settings(database_url=url), count=60)
        with psycopg.connect(url, autocommit=True) as conn:
            query = "SELECT originator_version, state FROM exchange_events ORDER BY notification_id"
            rows = [(seq, bytes(state)) for seq, state in conn.execute(query)]
            assert len(rows) == len(live)
            assert check(rows) == stored_hash(rows[-1][1])
            # a change by SQL on the server, read back the way the page says
            seq = next(s for s, state in rows if b"TradeExecuted" in state)
            conn.execute(
                "UPDATE exchange_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
                " '\"TradeExecuted\"', '\"OrderRejected\"'), 'UTF8') WHERE originator_version = %s",
                (seq,),
            )
            rows = [(s, bytes(state)) for s, state in conn.execute(query)]
    with pytest.raises(SystemExit, match=rf"^seq {seq}: the content does not hash"):
        check(rows)
