"""``spotex audit`` on a large log: end-to-end rate, and what each phase costs.

    .venv/bin/python bench/audit.py [--url postgresql://postgres@127.0.0.1:5432] [-n 1000000]
                                    [--db spotex_bench_audit] [--rebuild] [--phases 200000]
                                    [--jobs J] [--skip-full] [--installed]

The compiled build (``SPOTEX_MYPYC=1``, ``docs/audit.md``) is measured from a virtualenv it is
installed in, with ``--installed``: ``spotex`` is then imported as installed, not from this
checkout (which is otherwise first on ``sys.path``). The output says which modules ran, compiled
or Python, and where from.

1. Makes sure the scratch database ``--db`` holds a complete log of N requests and their N
   outcomes, built with the real engine (``bench/engine.py``'s seeded workload: limit orders near
   a drifting mid, cancels of live orders, market orders; ``Sequencer`` in batches of 5,000,
   snapshots every 100,000). The database is kept, so a rerun only audits; ``--rebuild`` makes it
   again. Building 1,000,000 takes several minutes.
2. Times the real command (``spotex audit --json --jobs J`` in this process; J defaults to the
   CPUs, the segments between snapshots run on J worker processes): seconds, outcomes/s and
   events/s (an event is a stored request or outcome, so the N-request log is 2·N events), the
   CPU time of all its processes, the load average before and after.
3. Times each phase alone, single-threaded, over the first ``--phases`` outcomes: reading the
   rows, decoding them (the outcomes' heads only, as the audit does; decoding them in full is
   timed too but left out of the sum: the audit does it only for an outcome that re-execution
   does not reproduce), the hash chain, the ledger fold, the book fold, and re-execution (execute,
   then compare the canonical bytes of the facts with the stored ones); it prints µs per outcome
   and the rate each phase alone would allow.

Figures go to stdout; ``docs/performance.md`` records them with the machine.
"""

# ruff: noqa: E402 - which spotex is imported (the checkout or the installed build) is chosen first
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Which spotex is measured (bench/_build.py): this checkout, or with --installed the installed build.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.append(ROOT)  # for bench._build itself
from bench._build import choose, describe

INSTALLED = choose(ROOT, sys.argv)

from bench._machine import print_machine
from bench.engine import Workload, fill_requests, server_info
from domain.commands import Command, request_id_for
from engine.audit import Audit
from engine.audit_decode import decode_outcome_head_row, decode_outcome_row, decode_request_row
from engine.sequencer import Sequencer
from spotex import audit_cli
from spotex.config import Settings
from spotex.wiring import build_logs

if INSTALLED:
    while sys.path[0] == ROOT:
        sys.path.pop(0)


class ApiWorkload(Workload):
    """bench/engine.py's workload with request ids as the api makes them: derived from the
    idempotency key where there is one (``request_id_for``), which the audit checks."""

    def _record(self, command: Command, actor: str | None, rid: str | None = None) -> Any:
        derived = request_id_for(command, actor)
        return super()._record(command, actor, rid or (str(derived) if derived else None))


def ensure_log(server: str, db: str, n: int, rebuild: bool) -> Settings:
    """The scratch database with a complete log of n requests (built if missing or partial)."""
    import psycopg
    from psycopg import sql

    settings = Settings(database_url=f"{server.rstrip('/')}/{db}")
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (db,)).fetchone()
        if exists and not rebuild:
            logs = build_logs(settings, create_tables=False)
            last_request = logs.last_request_position()
            if logs.engine_position() == last_request and _count(settings, "requests") == n:
                print(f"using the log in database {db}: {n:,} requests and their outcomes")
                return settings
            print(f"database {db} holds another or a partial log: rebuilding it")
        if exists:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(db)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(db)))
    logs = build_logs(settings, create_tables=True)
    started = time.perf_counter()
    work = ApiWorkload(users=20)
    setup = list(work.setup())
    total = fill_requests(logs, iter(setup)) + fill_requests(logs, work.orders(n - len(setup)))
    print(f"appended {total:,} requests in {time.perf_counter() - started:.0f} s "
          f"(generated by a shadow engine; kinds {work.kinds})")
    started = time.perf_counter()
    seq = Sequencer(logs, batch_size=5000, snapshot_every=100_000)
    while seq.step():
        if seq.seq % 100_000 < 5000:
            print(f"  engine at seq {seq.seq:,} ({seq.seq / (time.perf_counter() - started):,.0f}/s)")
    print(f"engine wrote {seq.seq:,} outcomes in {time.perf_counter() - started:.0f} s")
    return settings


def _count(settings: Settings, log: str) -> int:
    import psycopg

    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(f"select count(*) from {log}_events").fetchone()
    return int(row[0]) if row else 0


def _cpu() -> float:
    """CPU seconds of this process and its finished children: fairer than wall time when other
    work shares the machine."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def full_audit(settings: Settings, jobs: int | None) -> dict[str, Any]:
    os.environ["SPOTEX_DATABASE_URL"] = str(settings.database_url)
    out = io.StringIO()
    started, cpu = time.perf_counter(), _cpu()
    code = audit_cli.audit(argparse.Namespace(until=None, json=True, jobs=jobs), out=out)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    report: dict[str, Any] = json.loads(out.getvalue())
    report["exit"], report["wall"], report["cpu"] = code, seconds, cpu
    return report


def phases(settings: Settings, count: int) -> tuple[list[tuple[str, float]], int]:
    """CPU seconds per phase over the first ``count`` outcomes (and their requests), one thread
    (the reads include the client's side of the database round trips only). The phases hold all
    ``count`` outcomes in memory, which the streaming audit never does, so the cyclic garbage
    collector is off while they run (otherwise its passes over them are charged to decoding)."""
    gc.disable()
    try:
        return _phases(settings, count)
    finally:
        gc.enable()


def _phases(settings: Settings, count: int) -> tuple[list[tuple[str, float]], int]:
    logs = audit_cli.open_logs(settings)
    out: list[tuple[str, float]] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        started = time.process_time()
        result = fn()
        out.append((name, time.process_time() - started))
        return result

    def read(recorder: Any, until: int | None) -> list[Any]:
        """Pages as the audit reads them (``audit_cli._pg_fetch`` on PostgreSQL)."""
        fetch = audit_cli._pg_fetch(recorder, until)
        assert fetch is not None, "the phases are timed on PostgreSQL"
        rows: list[Any] = []
        after = 0
        while len(rows) < count:
            page = fetch(after)
            if not page:
                break
            rows += page
            after = page[-1][0]
        return rows[:count]

    raw_outcomes = timed("read exchange rows", lambda: read(logs.exchange, None))
    until = raw_outcomes[-1][0]
    heads = timed("decode outcome heads", lambda: [decode_outcome_head_row(n) for n in raw_outcomes])
    outcomes = timed(FULL_DECODE, lambda: [decode_outcome_row(n) for n in raw_outcomes])
    last_request = outcomes[-1].request_position
    raw_requests = timed(
        "read request rows", lambda: [r for r in read(logs.requests, None) if r[0] <= last_request]
    )
    requests = timed("decode requests", lambda: [decode_request_row(n) for n in raw_requests])
    for part in ("chain", "ledger", "book"):  # over the decoded outcomes: they need the facts
        run = Audit(parts=(part,))
        found = timed(part, lambda run=run: list(run.run(iter(requests), iter(outcomes))))
        assert not found, found[:3]
    run = Audit(parts=("reexecute",))  # as the audit runs it: deciding the heads' facts too
    found = timed("reexecute", lambda: list(run.run(iter(requests), iter(heads))))
    assert not found, found[:3]
    assert until
    return out, until


# The phases decode the outcomes in full as well, for the folds timed alone; the audit itself
# decodes an outcome in full only when re-execution does not give its stored facts' bytes.
FULL_DECODE = "(decode in full)"


def streaming(settings: Settings, until: int) -> tuple[int, float]:
    """The whole audit in this process as ``spotex audit --jobs 1`` runs it (pages streamed,
    nothing held, the collector on) up to exchange position ``until``: outcomes, CPU seconds
    (this process's, its page-reader thread's included)."""
    os.environ["SPOTEX_DATABASE_URL"] = str(settings.database_url)
    started = time.process_time()
    found, report, _ = audit_cli.audit_segment(audit_cli.Segment(None, None, {}), until, None)
    assert not found, found[:3]
    return report["outcomes"], time.process_time() - started


def build_info() -> str:
    """Which build runs: the compiled modules (``setup.py``'s list) that are C extensions."""
    names = ["domain.ledger", "domain.orders", "engine.exchange", "engine.handlers", "engine.trading",
             "engine.book", "engine.appliers", "engine.audit", "engine.audit_reexec", "engine.audit_ledger",
             "engine.audit_book", "engine.audit_decode", "spotex.audit_cli"]
    return describe(names, "audit-path")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432", help="the PostgreSQL server")
    p.add_argument("-n", type=int, default=1_000_000, help="requests in the log (default 1,000,000)")
    p.add_argument("--db", default="spotex_bench_audit", help="the scratch database, kept between runs")
    p.add_argument("--rebuild", action="store_true", help="build the log again")
    p.add_argument("--phases", type=int, default=200_000, help="outcomes timed per phase (0: skip)")
    p.add_argument("--skip-full", action="store_true", help="only the phases")
    p.add_argument("--jobs", type=int, default=None, help="processes for the audit (default: CPUs)")
    p.add_argument("--installed", action="store_true",
                   help="measure spotex as installed in this Python (the compiled build), not this checkout")
    args = p.parse_args(argv)
    print_machine()
    print(build_info())
    settings = ensure_log(args.url, args.db, args.n, args.rebuild)
    print(server_info(settings))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average before: {load} (other work on this machine slows every figure)")
    if not args.skip_full:
        r = full_audit(settings, args.jobs)
        events = r["outcomes"] + r["requests"]
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"\nspotex audit --jobs {r['jobs']} (load average after it {load}): exit {r['exit']}, "
              f"{r['outcomes']:,} outcomes + {r['requests']:,} requests "
              f"= {events:,} events in {r['wall']:.1f} s: {r['outcomes'] / r['wall']:,.0f} outcomes/s, "
              f"{events / r['wall']:,.0f} events/s")
        print(f"  facts {sum(r['facts'].values()):,} ({r['facts']})")
        print(f"  snapshots checked {r['snapshots_checked']}; violations {r['violations']}; "
              f"state hash {r.get('state_hash')}; head hash {r.get('head_hash')}")
        print(f"  {r['segments']} segments on {r['jobs']} worker processes; seconds: {r['seconds']}")
        per = r["cpu"] / r["outcomes"] * 1e6
        print(f"  CPU: {r['cpu']:.1f} s in all processes = {per:.0f} µs per outcome; "
              f"{r['outcomes'] / r['cpu']:,.0f} outcomes/s per busy CPU")
    if args.phases:
        print(f"\nphases, CPU time of one thread, over the first {args.phases:,} outcomes:")
        rows, until = phases(settings, args.phases)
        total = sum(s for name, s in rows if name != FULL_DECODE)
        for name, seconds in rows:
            us = seconds / args.phases * 1e6
            rate, share = args.phases / seconds, "" if name == FULL_DECODE else f"{seconds / total:6.1%}"
            print(f"  {name:<20} {seconds:7.2f} s  {us:7.1f} µs/outcome  {rate:>10,.0f}/s alone {share}")
        print(f"  {'all, in sequence':<20} {total:7.2f} s  {total / args.phases * 1e6:7.1f} µs/outcome  "
              f"{args.phases / total:>10,.0f} outcomes/s = {2 * args.phases / total:,.0f} events/s")
        outcomes, cpu = streaming(settings, until)
        print(f"  {'one process, streamed':<20} {cpu:7.2f} s  {cpu / outcomes * 1e6:7.1f} µs/outcome  "
              f"{outcomes / cpu:>10,.0f} outcomes/s = {2 * outcomes / cpu:,.0f} events/s (the whole audit, "
              "as --jobs 1 runs it)")
    print("load average after: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
