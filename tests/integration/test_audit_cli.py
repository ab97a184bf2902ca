"""``spotex audit`` and ``spotex replay`` against real stores, on SQLite and on PostgreSQL.

A flow is recorded with the real engine (``Logs.append_request``, ``Sequencer.step()`` with
batches of one, the live state captured after each step). Then:

- the untouched log audits clean (exit 0), also in segments between snapshots on two processes
  with the same report as one run (and so does every tampered copy below), also as a read-only
  PostgreSQL role made with the SQL of docs/audit.md;
- one stored outcome changed, one deleted, two swapped, one request changed and one deleted,
  each by SQL: exit 1, and the report's first violation names the first position affected;
- ``replay --at`` a position or a time gives exactly the balances and book the live engine had;
- every code block of docs/audit.md runs: the role's SQL, each ``$ spotex …`` line (the
  production one against that role), and the ``--json`` example names real report fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import psycopg
import pytest
from psycopg import sql

from domain.commands import (
    AmendOrder,
    CancelOrder,
    Command,
    CompleteWithdrawal,
    Deposit,
    ListAsset,
    ListMarket,
    PlaceOrder,
    RegisterUser,
    RequestWithdrawal,
    Transfer,
    request_id_for,
)
from engine.log import Logs
from engine.sequencer import Sequencer
from spotex import audit_cli
from spotex.cli import main
from spotex.config import Settings
from spotex.wiring import build_logs

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


# --- a recorded flow ---------------------------------------------------------------------------


class Flow:
    """Appends a seeded mix of every command and runs the engine one request at a time."""

    def __init__(self, logs: Logs, seed: int = 7) -> None:
        self.logs, self.rnd = logs, random.Random(seed)
        self.appended = 0
        self.users: list[tuple[str, str]] = []
        self.orders: list[tuple[str, str]] = []
        self.withdrawals: list[str] = []
        self.admin = ""

    def append(self, command: Command, actor: str | None) -> str:
        rid = request_id_for(command, actor) or uuid.UUID(int=self.rnd.getrandbits(128), version=4)
        self.logs.append_request(rid, actor, command.to_log(), T0 + timedelta(seconds=self.appended))
        self.appended += 1
        return str(rid)

    def setup(self) -> None:
        self.admin = self.append(RegisterUser(username="admin", password_hash="x", roles=["admin"]), None)
        self.append(ListAsset(symbol="BTC", precision=8), self.admin)
        self.append(ListAsset(symbol="USDT", precision=6), self.admin)
        self.append(
            ListMarket(
                symbol="BTC-USDT",
                base="BTC",
                quote="USDT",
                tick_size="0.01",
                lot_size="0.0001",
                maker_fee="0.001",
                taker_fee="0.002",
            ),
            self.admin,
        )
        for name in ("alice", "bob", "carol"):
            uid = self.append(RegisterUser(username=name, password_hash="x"), None)
            self.users.append((name, uid))
            self.append(Deposit(username=name, asset="USDT", amount="100000", reference="u"), self.admin)
            self.append(Deposit(username=name, asset="BTC", amount="5", reference="b"), self.admin)

    def one(self, i: int) -> None:
        rnd = self.rnd
        name, uid = rnd.choice(self.users)
        r = rnd.random()
        if r < 0.12 and self.orders:
            oid, owner = self.orders.pop(rnd.randrange(len(self.orders)))
            self.append(CancelOrder(order_id=uuid.UUID(oid)), owner)
        elif r < 0.22 and self.orders:
            oid, owner = rnd.choice(self.orders)
            self.append(
                AmendOrder(order_id=uuid.UUID(oid), quantity=f"{rnd.randint(1, 40) / 1e4:.4f}"), owner
            )
        elif r < 0.3:
            self.append(
                PlaceOrder(
                    market="BTC-USDT",
                    side=rnd.choice(("buy", "sell")),
                    type="market",
                    quantity=f"{rnd.randint(1, 30) / 1e4:.4f}",
                ),
                uid,
            )
        elif r < 0.34:
            self.withdrawals.append(
                self.append(
                    RequestWithdrawal(asset="USDT", amount=f"{rnd.randint(1, 50)}", reference=f"w{i}"), uid
                )
            )
        elif r < 0.37 and self.withdrawals:
            wid = self.withdrawals.pop()
            self.append(CompleteWithdrawal(withdrawal_id=uuid.UUID(wid)), self.admin)
        elif r < 0.4:
            to = rnd.choice([n for n, _ in self.users if n != name])
            self.append(Transfer(to_username=to, asset="BTC", amount="0.01", reference=f"t{i}"), uid)
        else:
            side = rnd.choice(("buy", "sell"))
            ticks = 3_000_000 + (-1 if side == "buy" else 1) * rnd.randint(-3, 25)
            oid = self.append(
                PlaceOrder(
                    market="BTC-USDT",
                    side=side,
                    type="limit",
                    price=f"{ticks / 100:.2f}",
                    quantity=f"{rnd.randint(1, 60) / 1e4:.4f}",
                    client_order_id=f"c{i}" if i % 3 == 0 else None,
                ),
                uid,
            )
            self.orders.append((oid, uid))


SNAPSHOT_EVERY = 40  # the recorded flow's 130 outcomes make four segments (snapshots 40, 80, 120)


def record(settings: Settings, count: int = 120) -> list[tuple[int, str, dict[str, Any], str]]:
    """Record a flow; per outcome: (position, time, live rendered state, live state hash)."""
    logs = build_logs(settings, create_tables=True)
    flow = Flow(logs)
    flow.setup()
    for i in range(count):
        flow.one(i)
    seq = Sequencer(logs, batch_size=1, snapshot_every=SNAPSHOT_EVERY)
    live = []
    while seq.step():
        live.append(
            (
                seq.exchange_position,
                T0 + timedelta(seconds=seq.seq - 1),
                audit_cli.render_state(seq.exchange),
                seq.exchange.state_hash(),
            )
        )
    assert seq.seq == flow.appended
    seq.close()
    for recorder in (logs.requests, logs.exchange):  # let the store be copied
        recorder.datastore.close()  # type: ignore[attr-defined]
    return live


# --- the two backends, and SQL on their tables -------------------------------------------------


class Store:
    """A fresh store and raw SQL access to its two event tables."""

    def __init__(self, kind: str, settings: Settings, env: dict[str, str]) -> None:
        self.kind, self.settings, self.env = kind, settings, env

    @contextmanager
    def sql(self, log: str) -> Iterator[Callable[..., list[Any]]]:
        """``run(statement, *params)`` on the table of ``log``; ``{t}`` is the table, ``{p}`` the
        position column, ``?`` a parameter."""
        if self.kind == "sqlite":
            conn: Any = sqlite3.connect(self.settings.data_dir / f"{log}.sqlite")
            t, p = "stored_events", "rowid"
        else:
            conn = psycopg.connect(str(self.settings.database_url), autocommit=True)
            t, p = f"{log}_events", "notification_id"

        def run(statement: str, *params: Any) -> list[Any]:
            text = statement.format(t=t, p=p)
            if self.kind != "sqlite":
                text = text.replace("?", "%s")
            cur = conn.execute(text, params)
            rows = cur.fetchall() if cur.description else []
            if self.kind == "sqlite":
                conn.commit()
            return rows

        try:
            yield run
        finally:
            conn.close()

    def state(self, log: str, position: int) -> dict[str, Any]:
        with self.sql(log) as run:
            return json.loads(bytes(run("SELECT state FROM {t} WHERE {p} = ?", position)[0][0]))

    def set_state(self, log: str, position: int, state: dict[str, Any]) -> None:
        with self.sql(log) as run:
            run("UPDATE {t} SET state = ? WHERE {p} = ?", json.dumps(state).encode(), position)


@pytest.fixture(scope="module")
def masters(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], tuple[Settings, list[Any]]]]:
    """The flow recorded once per backend in this module; each test audits a copy."""
    with ExitStack() as stack:
        cache: dict[str, tuple[Settings, list[Any]]] = {}

        def get(kind: str) -> tuple[Settings, list[Any]]:
            if kind not in cache:
                if kind == "sqlite":
                    settings = Settings(data_dir=tmp_path_factory.mktemp("audit-master"))
                else:
                    make_db = request.getfixturevalue("make_postgres_database")
                    settings = Settings(database_url=stack.enter_context(make_db()))
                cache[kind] = (settings, record(settings))
            return cache[kind]

        yield get


@pytest.fixture(params=["sqlite", "postgres"])
def recorded(
    request: pytest.FixtureRequest,
    masters: Callable[[str], tuple[Settings, list[Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Store, list[Any]]]:
    """A copy of the recorded flow (files copied; a database made from the master as template)."""
    master, live = masters(request.param)
    monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
    if request.param == "sqlite":
        data = tmp_path / "data"
        shutil.copytree(master.data_dir, data)
        monkeypatch.setenv("SPOTEX_DATA_DIR", str(data))
        yield Store("sqlite", Settings(data_dir=data), {"SPOTEX_DATA_DIR": str(data)}), live
        return
    assert master.database_url
    server, template = master.database_url.rsplit("/", 1)
    name = f"spotex_t_{os.getpid()}_{uuid.uuid4().hex[:12]}"  # the prefix conftest cleans up after
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        )
    url = f"{server}/{name}"
    monkeypatch.setenv("SPOTEX_DATABASE_URL", url)
    try:
        yield Store("postgres", Settings(database_url=url), {"SPOTEX_DATABASE_URL": url}), live
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["audit", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def trade_position(store: Store, live: list[Any]) -> int:
    for position, *_ in live:
        if any(f["type"] == "TradeExecuted" for f in store.state("exchange", position)["facts"]):
            return int(position)
    raise AssertionError("the flow made no trade")


# --- audit ------------------------------------------------------------------------------------


def test_the_untouched_log_is_clean(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    files = sorted(store.settings.data_dir.glob("*.sqlite")) if store.kind == "sqlite" else []
    before = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    code, report = run_audit(capsys)
    assert code == 0, report["violation_list"]
    assert report["outcomes"] == report["requests"] == len(live)
    assert report["last_position"] == live[-1][0]
    assert report["state_hash"] == live[-1][3]
    assert report["facts"]["TradeExecuted"] > 5 and report["facts"]["OrderAmended"] > 0
    assert all(row["sum"] == 0 for row in report["assets"].values())
    assert main(["audit"]) == 0
    assert "CLEAN" in capsys.readouterr().out
    middle = live[len(live) // 2]
    code, report = run_audit(capsys, "--until", str(middle[0]))
    assert (code, report["last_position"], report["state_hash"]) == (0, middle[0], middle[3])
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == before  # read-only


def tamper(store: Store, live: list[Any], how: str) -> None:
    """One stored event changed, deleted or two swapped, by SQL."""
    if how == "outcome changed":
        position = trade_position(store, live)
        state = store.state("exchange", position)
        state["facts"][-1]["type"] = "OrderRejected"
        store.set_state("exchange", position, state)
    elif how.startswith("outcome deleted"):
        with store.sql("exchange") as run:
            run("DELETE FROM {t} WHERE {p} = ?", live[int(how.rsplit(" ", 1)[1])][0])
    elif how == "outcomes swapped":
        a, b = live[90][0], live[91][0]
        state_a, state_b = store.state("exchange", a), store.state("exchange", b)
        store.set_state("exchange", a, state_b)
        store.set_state("exchange", b, state_a)
    elif how == "request deleted":
        with store.sql("requests") as run:
            run("DELETE FROM {t} WHERE {p} = ?", 100)
    elif how == "snapshot changed":
        with store.sql("exchange") as run:  # the snapshots live beside the exchange log
            table = "stored_snapshots" if store.kind == "sqlite" else "exchange_snapshots"
            run(f"UPDATE {table} SET state = ? WHERE originator_version = ?", b"x\nnot zlib", 80)


@pytest.mark.parametrize(
    "how",
    [
        "untouched",
        "outcome changed",
        "outcome deleted 39",  # the outcome at the first snapshot
        "outcome deleted 100",
        "outcomes swapped",
        "request deleted",
        "snapshot changed",
    ],
)
def test_the_audit_in_segments_finds_what_one_run_finds(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str], how: str
) -> None:
    store, live = recorded
    tamper(store, live, how)
    code, alone = run_audit(capsys, "--jobs", "1")
    assert (alone["jobs"], alone["segments"]) == (1, 4 if how != "snapshot changed" else 3)
    code_split, split = run_audit(capsys, "--jobs", "2")
    assert split["jobs"] == 2
    assert code == code_split == (0 if how == "untouched" else 1)
    keys = ("state_hash", "head_hash", "facts", "assets", "outcomes", "requests", "violations")
    keys += ("snapshots_checked", "first_violation", "violation_list", "first_position", "last_position")
    assert {k: split[k] for k in keys} == {k: alone[k] for k in keys}
    if how == "untouched":  # each segment on its own, none audited again
        assert split["snapshots_checked"] == 3
        assert set(split["seconds"]) == {*(f"audit[segment {i}/4]" for i in range(1, 5)), "total"}
    if how == "outcome deleted 100":  # segments 1 and 2 stand; from 3 on, one run
        runs = {"audit[segment 1/4]", "audit[segment 2/4]", "audit[from segment 3/4]", "total"}
        assert set(split["seconds"]) == runs


@pytest.mark.parametrize("snapshots", ["kept", "deleted"])
def test_the_workers_start_before_the_snapshots_are_read_and_only_when_there_are_some(
    recorded: tuple[Store, list[Any]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    snapshots: str,
) -> None:
    """Given a log with stored snapshots, when it is audited with ``--jobs 2``, then its
    workers are started first, so that their start overlaps the parent's reading of the
    snapshots; given the same log without snapshots, no worker is started at all (one run in
    this process), and the report is the same."""
    store, _ = recorded
    code, alone = run_audit(capsys, "--jobs", "1")
    if snapshots == "deleted":
        with store.sql("exchange") as run:
            run(f"DELETE FROM {'stored_snapshots' if store.kind == 'sqlite' else 'exchange_snapshots'}")
    calls: list[str] = []
    start_workers, read_snapshots = audit_cli.start_workers, audit_cli.read_snapshots
    monkeypatch.setattr(audit_cli, "start_workers", lambda n: calls.append("start") or start_workers(n))
    monkeypatch.setattr(audit_cli, "read_snapshots", lambda g: calls.append("read") or read_snapshots(g))
    code_split, split = run_audit(capsys, "--jobs", "2")
    if snapshots == "kept":
        assert calls == ["start", "read"] and (split["jobs"], split["segments"]) == (2, 4)
    else:
        assert calls == ["read"] and (split["jobs"], split["segments"]) == (1, 1)
    keys = ("state_hash", "head_hash", "facts", "assets", "outcomes", "requests")
    assert code == code_split == 0 and {k: split[k] for k in keys} == {k: alone[k] for k in keys}


def spawned_workers() -> list[int]:
    """This process's children that are multiprocessing's spawned workers (not its resource tracker)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def test_a_worker_killed_mid_segment_leaves_the_rest_to_this_process(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Given the audit on two workers, each holding a segment (held there by a lock on the
    exchange log's table, taken once the workers exist: the parent has read that table by then,
    and reads only the snapshots' table after it), when one is SIGKILLed (as the OOM killer
    would), then the audit neither waits for ever for the lost segment nor drops it: it says
    so and audits the rest itself, with the report of an audit in one process."""
    store, _ = recorded
    if store.kind != "postgres":
        pytest.skip("a worker is held mid-segment by a PostgreSQL table lock")
    code, alone = run_audit(capsys, "--jobs", "1")
    assert code == 0 and alone["segments"] == 4
    result: dict[str, Any] = {}
    audit = threading.Thread(
        target=lambda: result.update(code=main(["audit", "--json", "--jobs", "2"])), daemon=True)
    with psycopg.connect(str(store.settings.database_url)) as lock:
        audit.start()
        deadline = monotonic() + 60
        while len(workers := spawned_workers()) < 2 and monotonic() < deadline and audit.is_alive():
            sleep(0.002)
        lock.execute("LOCK TABLE exchange_events IN ACCESS EXCLUSIVE MODE")
        assert len(workers) == 2, "the audit did not start its two workers"
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s"
        waiting += " AND datname = current_database()"
        with psycopg.connect(str(store.settings.database_url), autocommit=True) as watch:
            while watch.execute(waiting, (lock.info.backend_pid,)).fetchone() != (2,):
                assert monotonic() < deadline, "the workers never reached the exchange log"
                sleep(0.01)
        os.kill(workers[0], signal.SIGKILL)
        lock.rollback()  # the lock goes
    audit.join(120)
    assert not audit.is_alive(), "the audit waits for ever for the killed worker's segment"
    out, err = capsys.readouterr()
    split = json.loads(out)
    assert result["code"] == 0 and "a worker process died" in err
    keys = ("state_hash", "head_hash", "facts", "assets", "outcomes", "requests", "violations")
    assert {k: split[k] for k in keys} == {k: alone[k] for k in keys}


@pytest.mark.parametrize("how", ["rewritten", "bytes"])
def test_a_changed_outcome_is_named_at_its_position(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str], how: str
) -> None:
    store, live = recorded
    position = trade_position(store, live)
    if how == "rewritten":  # decoded, changed and stored again as other JSON
        state = store.state("exchange", position)
        trade = next(f for f in state["facts"] if f["type"] == "TradeExecuted")
        trade["quantity"] += 1
        store.set_state("exchange", position, state)
    else:  # one byte of the stored facts changed in place, the layout kept
        with store.sql("exchange") as run:
            raw = bytes(run("SELECT state FROM {t} WHERE {p} = ?", position)[0][0])
            start = raw.index(b'"quantity":', raw.index(b'"TradeExecuted"') - 400) + len(b'"quantity":')
            changed = raw[:start] + b"9" + raw[start:]
            run("UPDATE {t} SET state = ? WHERE {p} = ?", changed, position)
    code, report = run_audit(capsys)
    first = report["first_violation"]
    assert code == 1
    assert (first["log"], first["position"], first["code"]) == ("exchange", position, "hash_mismatch")
    codes = {v["code"] for v in report["violation_list"]}
    assert {"reexecution_mismatch", "trade_amounts"} <= codes
    assert main(["audit"]) == 1
    assert f"FIRST affected: exchange log position {position}" in capsys.readouterr().out


def test_published_head_hashes_hold_on_the_untouched_log(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    middle, last = live[len(live) // 2][0], live[-1][0]
    anchors = [f"{p}:{store.state('exchange', p)['hash']}" for p in (middle, last)]
    code, report = run_audit(capsys, "--anchor", anchors[0], "--anchor", anchors[1].upper())
    assert code == 0, report["violation_list"]
    assert [(a["position"], a["holds"]) for a in report["anchors"]] == [(middle, True), (last, True)]
    assert main(["audit", "--anchor", anchors[0]]) == 0
    assert "anchors: 1 of 1 published head hashes found in the chain" in capsys.readouterr().out


def test_a_tail_truncated_with_its_tracking_row_is_caught_only_by_a_published_head(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The chain cannot show that its last outcomes were deleted together with the engine's
    tracking row (the requests then look pending); a head hash published before can."""
    store, live = recorded
    head = live[-1][0]
    published = f"{head}:{store.state('exchange', head)['hash']}"
    kept = live[-6][0]
    answered = store.state("exchange", kept)["request_position"]
    with store.sql("exchange") as run:
        run("DELETE FROM {t} WHERE {p} > ?", kept)
        tracking = "tracking" if store.kind == "sqlite" else "exchange_tracking"
        run(f"UPDATE {tracking} SET notification_id = ?", answered)
    code, report = run_audit(capsys)
    assert code == 0 and report["last_position"] == kept  # the truncation alone passes
    code, report = run_audit(capsys, "--anchor", published)
    first = report["first_violation"]
    assert code == 1 and report["violations"] == 1
    assert (first["log"], first["position"], first["code"]) == ("exchange", head, "anchor_missing")
    wrong = f"{kept}:{'0' * 64}"
    code, report = run_audit(capsys, "--anchor", wrong)
    assert code == 1 and report["first_violation"]["code"] == "anchor_mismatch"
    assert report["first_violation"]["position"] == kept


def test_the_docs_publish_and_check_a_head_as_pasted(
    recorded: tuple[Store, list[Any]], tmp_path: Path
) -> None:
    """docs/audit.md's ```sh block, run by bash in one session as a reader would paste it."""
    store, live = recorded
    (block,) = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "audit.md").read_text(), re.S)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    env.update(store.env, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    head = live[-1][0]
    assert (tmp_path / "anchor.txt").read_text().strip() == f"{head}:{store.state('exchange', head)['hash']}"
    assert "anchors: 1 of 1 published head hashes found in the chain" in done.stdout


@pytest.mark.parametrize("bad", ["12", "x:" + "a" * 64, "0:" + "a" * 64, "5:abc", "5:" + "g" * 64])
def test_a_malformed_anchor_is_refused_before_anything_is_read(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["audit", "--anchor", bad])
    assert stopped.value.code == 2 and "expected POSITION:HASH" in capsys.readouterr().err


def test_an_anchor_beyond_until_is_refused(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    head = live[-1][0]
    anchor = f"{head}:{store.state('exchange', head)['hash']}"
    assert main(["audit", "--until", str(live[10][0]), "--anchor", anchor]) == 2
    assert f"--anchor at position {head} is beyond --until" in capsys.readouterr().err


def test_a_deleted_outcome_breaks_the_chain_at_the_next_position(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    gone, after = live[40][0], live[41][0]
    with store.sql("exchange") as run:
        run("DELETE FROM {t} WHERE {p} = ?", gone)
    code, report = run_audit(capsys)
    first = report["first_violation"]
    assert code == 1
    assert (first["log"], first["position"], first["code"]) == ("exchange", after, "seq_gap")
    assert f"after position {live[39][0]}" in first["message"]
    missing = [v for v in report["violation_list"] if v["code"] == "request_without_outcome"]
    assert [(v["log"], v["position"]) for v in missing] == [("requests", 41)]


def test_swapped_outcomes_are_named_at_the_first_of_the_two(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    a, b = live[60][0], live[61][0]
    state_a, state_b = store.state("exchange", a), store.state("exchange", b)
    store.set_state("exchange", a, state_b)
    store.set_state("exchange", b, state_a)
    code, report = run_audit(capsys)
    first = report["first_violation"]
    assert code == 1
    assert (first["log"], first["position"]) == ("exchange", a)
    assert {"chain_break", "hash_mismatch", "outcome_order"} <= {v["code"] for v in report["violation_list"]}


def test_a_changed_request_makes_reexecution_differ_and_is_named(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _live = recorded
    with store.sql("requests") as run:
        rows = run("SELECT {p}, state FROM {t} ORDER BY {p}")
    position, state = next(
        (p, json.loads(bytes(s)))
        for p, s in rows
        if json.loads(bytes(s))["command"].get("type") == "limit" and p > 30
    )
    state["command"]["quantity"] = "0.0999"
    store.set_state("requests", position, state)
    code, report = run_audit(capsys)
    first = report["first_violation"]
    assert code == 1
    assert (first["log"], first["position"], first["code"]) == ("exchange", position, "reexecution_mismatch")
    assert first["request_position"] == position
    assert main(["audit"]) == 1
    text = capsys.readouterr().out
    assert f"FIRST affected: requests log position {position}" in text


def test_a_deleted_request_is_named_by_its_position(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, _live = recorded
    with store.sql("requests") as run:
        run("DELETE FROM {t} WHERE {p} = ?", 50)
    code, report = run_audit(capsys)
    first = report["first_violation"]
    assert code == 1
    assert (first["log"], first["position"], first["code"]) == ("requests", 50, "missing_request")


def test_undecodable_events_are_violations(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    with store.sql("exchange") as run:
        run("UPDATE {t} SET state = ? WHERE {p} = ?", b"{not json", live[20][0])
    code, report = run_audit(capsys)
    assert code == 1
    assert (report["first_violation"]["position"], report["first_violation"]["code"]) == (
        live[20][0],
        "undecodable",
    )


def test_a_missing_store_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
    monkeypatch.setenv("SPOTEX_DATA_DIR", str(tmp_path / "nothing"))
    assert main(["audit"]) == 2
    assert not (tmp_path / "nothing" / "exchange.sqlite").exists()


# --- replay -----------------------------------------------------------------------------------


def test_replay_gives_the_live_state_at_positions_and_times(
    recorded: tuple[Store, list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, live = recorded
    logs = audit_cli.open_logs(store.settings)
    for position, time, rendered, state_hash in live[:: max(1, len(live) // 9)] + live[-1:]:
        ex, last = audit_cli.replay_state(logs, position)
        assert last is not None and last.position == position
        assert ex.state_hash() == state_hash
        assert audit_cli.render_state(ex) == rendered
        ex, last = audit_cli.replay_state(logs, time + timedelta(milliseconds=500))
        assert last is not None and ex.state_hash() == state_hash
    position, _, rendered, _ = live[70]
    capsys.readouterr()
    assert main(["replay", "--at", str(position)]) == 0
    text = capsys.readouterr().out
    assert f"as of exchange log position {position}" in text
    for b in rendered["balances"]:
        assert b["available"] in text and b["frozen"] in text
    for book in rendered["books"].values():
        for price, quantity in book["bids"] + book["asks"]:
            assert re.search(rf"{re.escape(price)}\s+{re.escape(quantity)}", text)
    assert main(["replay", "--at", str(position), "--user", "alice", "--market", "BTC-USDT"]) == 0
    text = capsys.readouterr().out
    assert "bob" not in text and "alice" in text
    assert main(["replay", "--at", "yesterday"]) == 2


# --- the read-only role of docs/audit.md ------------------------------------------------------


def test_audit_as_the_read_only_role_of_the_docs(
    make_postgres_database: Callable[[], AbstractContextManager[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    block = re.search(r"```sql\n(.*?)```", (ROOT / "docs" / "audit.md").read_text(), re.S)
    assert block, "docs/audit.md has the role's SQL in a ```sql block"
    role = f"auditor_{uuid.uuid4().hex[:8]}"
    with make_postgres_database() as url:
        record(Settings(database_url=url), count=30)
        dbname = url.rsplit("/", 1)[1]
        script = block.group(1).replace("auditor", role).replace("spotex", dbname).replace("CHANGE-ME", "pw")
        admin = psycopg.connect(url, autocommit=True)
        try:
            for statement in filter(str.strip, script.split(";")):
                admin.execute(statement)
            role_url = url.replace("postgres@", f"{role}:pw@", 1)
            monkeypatch.delenv("SPOTEX_DATA_DIR", raising=False)
            monkeypatch.setenv("SPOTEX_DATABASE_URL", role_url)
            capsys.readouterr()
            assert main(["audit"]) == 0, capsys.readouterr()
            # the documented command line, pointed at this database
            text = (ROOT / "docs" / "audit.md").read_text()
            (line,) = [c for c in console_commands(text) if c[0].startswith("SPOTEX_DATABASE_URL=")]
            env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
            run_command(
                [f"SPOTEX_DATABASE_URL={role_url}", *line[1:]], env, tmp_path
            )
            assert json.loads((tmp_path / "audit.json").read_text())["violations"] == 0
            with psycopg.connect(role_url, autocommit=True) as conn, pytest.raises(psycopg.Error):
                conn.execute("DELETE FROM exchange_events")
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            admin.close()


# --- the other code blocks of docs/audit.md --------------------------------------------------


def console_commands(text: str) -> list[list[str]]:
    """The ``$ `` lines of the ```console blocks, split as a shell would (comments dropped)."""
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    return [
        shlex.split(line[2:], comments=True)
        for block in blocks
        for line in block.splitlines()
        if line.startswith("$ ")
    ]


def run_command(argv: list[str], env: dict[str, str], cwd: Path) -> int:
    """One documented command: leading VAR=value assignments, ``spotex`` as this checkout's CLI,
    ``> file`` as a redirect."""
    extra = {}
    while "=" in argv[0]:
        key, _, value = argv.pop(0).partition("=")
        extra[key] = value
    assert argv[0] == "spotex", argv
    out = None
    if ">" in argv:
        i = argv.index(">")
        out, argv = cwd / argv[i + 1], argv[:i]
    result = subprocess.run(
        [sys.executable, "-m", "spotex.cli", *argv[1:]],
        cwd=cwd,
        env={**env, **extra},
        capture_output=True,
        timeout=300,
    )
    if out is not None:
        out.write_bytes(result.stdout)
    assert result.returncode == 0, (argv, result.stderr.decode()[-2000:])
    return result.returncode


@pytest.mark.parametrize("recorded", ["sqlite"], indirect=True)
def test_the_docs_commands_run_and_the_json_example_is_true(
    recorded: tuple[Store, list[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = recorded
    text = (ROOT / "docs" / "audit.md").read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    env.update(store.env)
    commands = [c for c in console_commands(text) if not c[0].startswith("SPOTEX_DATABASE_URL=")]
    assert len(commands) >= 5
    for argv in commands:
        run_command(argv, env, tmp_path)
    example = json.loads(re.sub(r'"…": 0', '"x": 0', re.findall(r"```json\n(.*?)```", text, re.S)[0]))
    _, report = run_audit(capsys)
    assert set(example) <= set(report), set(example) - set(report)
    assert set(example["assets"]["USDT"]) == set(report["assets"]["USDT"])
