"""``spotex audit`` and ``spotex replay``: read the stores (read-only), run ``engine.audit``, print.

The stores are opened with ``create_tables=False`` (and SQLite files in ``mode=ro``); nothing
here writes. Pages of stored events are read through the recorders (on PostgreSQL directly, see
``_pg_fetch``) and decoded by ``engine.audit_decode``; the checks are ``engine.audit``; replayed
state is ``engine.audit_replay``. The audit runs in segments between the stored snapshots, on as
many processes as there are CPUs (``--jobs``; see ``run_segments``). Progress goes to stderr;
the report to stdout. Exit 0 when clean, 1 with violations, 2 when the stores cannot be read.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from pathlib import Path
from typing import Any, TextIO

from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from domain.amounts import format_units
from engine.audit import Audit, AuditViolation, Undecided, Unreadable
from engine.audit_decode import (
    Stored,
    StoredRow,
    decode_outcome,
    decode_outcome_head,
    decode_outcome_head_row,
    decode_request,
    decode_request_row,
    decode_snapshot,
)
from engine.audit_replay import ReplayError, fold, render_state
from engine.exchange import Exchange, RequestRecord
from engine.log import SNAPSHOT_STREAM_ID, Logs, RecordedOutcome
from spotex.config import Settings, event_store_envs

PAGE = 5_000
LISTED = 100  # violations printed in text; --json lists up to JSON_LISTED
JSON_LISTED = 1_000


class StoreError(RuntimeError):
    """The stores cannot be opened or read."""


# -- opening and reading ------------------------------------------------------------------------


def open_logs(settings: Settings) -> Logs:
    """The logs of this configuration, without creating a table or a file."""
    envs = event_store_envs(settings, create_tables=False)
    for name, env in envs.items():
        if env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
            # one reader per log and process: a parallel audit must not take the server's connections
            env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"] = "1", "2"
        if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
            path = Path(env["SQLITE_DBNAME"])
            if not path.exists():
                raise StoreError(f"no {name} log at {path} (set SPOTEX_DATA_DIR or SPOTEX_DATABASE_URL)")
            env["SQLITE_DBNAME"] = f"file:{path.resolve()}?mode=ro"
    try:
        return Logs.open(envs)
    except Exception as exc:
        raise StoreError(f"cannot open the logs: {exc}") from exc


def close_logs(logs: Logs) -> None:
    """Give the stores' connections back (each segment opens its own)."""
    for recorder in (logs.requests, logs.exchange, logs.snapshots):
        close = getattr(getattr(recorder, "datastore", None), "close", None)
        if close is not None:
            close()


def _pages(fetch: Callable[[int], Sequence[Any]], after: int = 0) -> Iterator[Sequence[Any]]:
    """Pages of notifications (or of ``StoredRow`` tuples, from ``_pg_fetch``), each fetched
    when the last one is used up.

    In this process, not ahead in a thread: a reader thread fetching the next page while this
    one was audited cost more CPU than its overlap saved wall time (1M log, ``--jobs 2`` on 2
    vCPUs, alternated: 91-100 µs per outcome and 49.5-74.5 s without it, 103 µs and 55.2-82.1 s
    with it; docs/performance.md)."""
    while True:
        try:
            page = fetch(after)
        except Exception as exc:
            raise StoreError(f"reading the log failed: {exc}") from exc
        if not page:
            return
        yield page
        last = page[-1]
        after = last[0] if type(last) is tuple else last.id


def _decoded(pages: Iterator[Sequence[Any]], decode: Callable[[Any], Any]) -> Iterator[Any]:
    """Every item of every page, decoded: chained and mapped in C, no Python frame per item."""
    return chain.from_iterable(map(map, repeat(decode), pages))


def _pg_fetch(recorder: Any, stop: int | None) -> Callable[[int], Sequence[StoredRow]] | None:
    """Pages of a PostgreSQL recorder's table read directly: plain tuples (``StoredRow``) in
    binary, the stream id as text (the library's ``select_notifications`` builds a dict, a
    ``UUID`` and a ``Notification`` per row, several times the cost of the row). None for other
    stores."""
    datastore: Any = getattr(recorder, "datastore", None)
    if not hasattr(datastore, "schema") or not hasattr(recorder, "events_table_name"):
        return None
    query = SQL(
        "SELECT notification_id, originator_id::text, originator_version, topic, state FROM {}.{}"
        " WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
    ).format(Identifier(datastore.schema), Identifier(recorder.events_table_name))
    last = (1 << 63) - 1 if stop is None else stop

    def fetch(after: int) -> list[StoredRow]:
        with datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as cur:
            cur.execute(query, (after, last, PAGE), prepare=True)
            rows: list[StoredRow] = cur.fetchall()
            return rows

    return fetch


def iter_outcomes(
    logs: Logs, until: int | None = None, slice_facts: bool = True, after: int = 0
) -> Iterator[RecordedOutcome | Unreadable]:
    """Outcomes after position ``after`` up to ``until`` (inclusive), decoded."""
    pg = _pg_fetch(logs.exchange, until)
    if pg is not None:
        return _decoded(_pages(pg, after), lambda row: decode_outcome(Stored(row), slice_facts))
    return _decoded(_pages(_outcome_pages(logs, until), after), lambda n: decode_outcome(n, slice_facts))


def iter_outcome_heads(
    logs: Logs, until: int | None = None, after: int = 0
) -> Iterator[RecordedOutcome | Undecided | Unreadable]:
    """The same outcomes for the audit: their facts left undecided where they can be (see
    ``engine.audit.Undecided``: the audit takes the re-executed facts when their bytes are
    the stored ones)."""
    pg = _pg_fetch(logs.exchange, until)
    if pg is not None:
        return _decoded(_pages(pg, after), decode_outcome_head_row)
    return _decoded(_pages(_outcome_pages(logs, until), after), decode_outcome_head)


def _outcome_pages(logs: Logs, until: int | None) -> Callable[[int], Sequence[Any]]:
    return lambda a: logs.exchange.select_notifications(
        start=a, limit=PAGE, stop=until, inclusive_of_start=False
    )


def iter_requests(
    logs: Logs, after: int = 0, stop: int | None = None
) -> Iterator[RequestRecord | Unreadable]:
    """Requests after position ``after`` up to ``stop`` (inclusive), decoded."""
    pg = _pg_fetch(logs.requests, stop)
    if pg is not None:
        return _decoded(_pages(pg, after), decode_request_row)
    fetch = lambda a: logs.requests.select_notifications(  # noqa: E731
        start=a, limit=PAGE, stop=stop, inclusive_of_start=False
    )
    return _decoded(_pages(fetch, after), decode_request)


def has_snapshots(logs: Logs) -> bool:
    """Whether any engine snapshot is stored (read, not checked)."""
    try:
        return bool(logs.snapshots.select_events(SNAPSHOT_STREAM_ID, desc=True, limit=1))
    except Exception as exc:
        raise StoreError(f"reading the snapshots failed: {exc}") from exc


def read_snapshots(logs: Logs) -> tuple[dict[int, dict[str, Any]], list[AuditViolation]]:
    """Stored engine snapshots by seq; one that fails its checksum is a violation."""
    good: dict[int, dict[str, Any]] = {}
    bad: list[AuditViolation] = []
    for stored in logs.snapshots.select_events(SNAPSHOT_STREAM_ID):
        checksum, _, packed = stored.state.partition(b"\n")
        try:
            body = zlib.decompress(packed)
            if hashlib.sha256(body).hexdigest().encode() != checksum:
                raise ValueError("checksum mismatch")
            good[stored.originator_version] = decode_snapshot(body)
        except Exception as exc:
            bad.append(
                AuditViolation(
                    "snapshots",
                    stored.originator_version,
                    None,
                    "snapshot_corrupt",
                    f"the snapshot does not verify: {exc}",
                )
            )
    return good, bad


# -- spotex audit -------------------------------------------------------------------------------

# The stored snapshots cut the log into segments; each is audited on its own process, starting
# from the snapshot at its start (its re-executing engine, ledger and book seeded from it) and
# required to end exactly at the snapshot at its end (``engine.audit_seed``). A segment that
# ends clean has proven that snapshot, so the next segment starts from proven state: by
# induction every segment is proven from position 0. The first segment that is not clean, and
# everything after it, is audited again in one run from the snapshot at its start, so the
# findings are those of one run from position 0, in its order.
CHAIN_CODES = frozenset({"seq_gap", "seq_order", "chain_break", "hash_mismatch", "request_order"})
MAX_FOUND = 100_000  # findings kept per run; the count goes on
# The cyclic collector's thresholds while a segment is audited. Every outcome allocates a few
# hundred short-lived containers (decoded and re-executed facts), all freed by reference
# counting, so the default first threshold (700) ran a young collection every few outcomes
# and an old one over the held state every hundred or so: 6-9 µs per outcome on the 100k log.
AUDIT_GC_THRESHOLDS = (50_000, 50, 1_000)


@dataclass(frozen=True, slots=True)
class Segment:
    """Outcomes after ``start`` (a snapshot record, None: position 0) up to ``end`` (None: to
    the end of what is audited), with the stored snapshots whose seq falls in it."""

    start: dict[str, Any] | None
    end: dict[str, Any] | None
    snapshots: dict[int, dict[str, Any]]


def plan_segments(snapshots: dict[int, dict[str, Any]], size: int) -> list[Segment]:
    """Segments between snapshots whose seq, exchange and request positions all increase and
    lie inside the audited positions; any other snapshot is only checked where its seq falls."""
    bounds: list[dict[str, Any]] = []
    last = (0, 0, 0)
    for seq in sorted(snapshots):
        snap = snapshots[seq]
        ep, rp = snap.get("exchange_position"), snap.get("request_position")
        if not (type(ep) is int and type(rp) is int):
            continue
        key = (seq, ep, rp)
        if (
            snap.get("seq") == seq
            and isinstance(snap.get("last_hash"), str)
            and isinstance(snap.get("state"), dict)
            and all(a > b for a, b in zip(key, last, strict=True))
            and key[1] < size
        ):
            bounds.append(snap)
            last = key
    out: list[Segment] = []
    for i, end in enumerate([*bounds, None]):
        start = bounds[i - 1] if i else None
        low = start["seq"] if start else 0
        high = end["seq"] if end else None
        inside = {q: s for q, s in snapshots.items() if q > low and (high is None or q <= high)}
        out.append(Segment(start, end, inside))
    return out


def audit_segment(
    segment: Segment,
    until: int | None,
    tracked: int | None,
    known_ids: Collection[str] = (),
    label: str = "audit",
) -> tuple[list[AuditViolation], dict[str, Any], list[str]]:
    """Audit one segment over the stores of this process's configuration: its findings (at most
    MAX_FOUND), its report, and the ids first applied in it."""
    logs = open_logs(Settings.from_env())
    started = time.perf_counter()

    def progress(outcomes: int, position: int) -> None:
        rate = outcomes / max(time.perf_counter() - started, 1e-9)
        print(
            f"{label}: {outcomes:,} outcomes to position {position:,} ({rate:,.0f} outcomes/s)",
            file=sys.stderr,
        )

    start, end = segment.start, segment.end
    run = Audit(
        tracked_position=tracked if end is None else None,
        snapshots=segment.snapshots,
        progress=progress,
        progress_every=50_000,
        start=start,
        known_ids=known_ids,
        final=end is None,
    )
    requests = iter_requests(
        logs, after=start["request_position"] if start else 0, stop=end["request_position"] if end else None
    )
    outcomes = iter_outcome_heads(
        logs, end["exchange_position"] if end else until, after=start["exchange_position"] if start else 0
    )
    found: list[AuditViolation] = []
    thresholds = gc.get_threshold()
    gc.set_threshold(*AUDIT_GC_THRESHOLDS)
    try:
        for v in run.run(requests, outcomes):
            if len(found) < MAX_FOUND:
                found.append(v)
    finally:
        gc.set_threshold(*thresholds)
        close_logs(logs)
    report = run.report()
    report["seconds"] = {label: round(time.perf_counter() - started, 3)}
    return found, report, list(run.new_ids())


def merge_segments(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of consecutive segments: counts add up, the state at the
    end is the last segment's (its folds were seeded with everything before)."""
    merged = dict(reports[-1])
    for key in ("outcomes", "requests", "snapshots_checked", "violations"):
        merged[key] = sum(r[key] for r in reports)
    facts: Counter[str] = Counter()
    for r in reports:
        facts.update(r["facts"])
    merged["facts"] = dict(sorted(facts.items()))
    merged["first_position"] = next((r["first_position"] for r in reports if r["first_position"]), None)
    merged["seconds"] = {k: v for r in reports for k, v in r["seconds"].items()}
    return merged


def start_workers(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` worker processes, started now: each spawns an interpreter and imports the audit
    (~0.4 s of CPU), which ``audit`` lets overlap with reading and decoding the snapshots."""
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(jobs):  # a worker is spawned per task submitted while none is idle
        pool.submit(ready)
    return pool


def ready() -> None:
    """A worker's first task: nothing. Unpickling it imported this module, and with it the audit."""


def run_segments(
    segments: list[Segment],
    until: int | None,
    tracked: int | None,
    jobs: int,
    err: TextIO | None = None,
    pool: ProcessPoolExecutor | None = None,
) -> tuple[list[AuditViolation], dict[str, Any]]:
    """The segments on ``jobs`` processes; from the first one that is not clean (a finding, or
    an id applied in an earlier segment too) one run in this process to the end.

    At most one segment per worker is in flight, and a worker that finishes takes the next
    segment at once (the results are used in order). When a segment is not clean, the segments
    still running are left to finish (at most one per worker; their results are dropped, as are
    those that finished ahead of it) while the rest is audited here. A worker that dies
    (killed, out of memory) breaks the pool: the segments from the first one without a result
    are then audited here too, and ``err`` says so, where ``multiprocessing.Pool`` would have
    waited for the lost result for ever.

    ``pool``: workers already started (``start_workers``), which the caller shuts down; without
    it the workers are started here.
    """
    n = len(segments)
    reports: list[dict[str, Any]] = []
    seen: set[str] = set()
    if jobs < 2 or n < 2:
        return _audit_rest(segments, 0, until, tracked, seen, reports)
    workers = min(jobs, n)
    Result = tuple[list[AuditViolation], dict[str, Any], list[str]]
    with nullcontext(pool) if pool is not None else start_workers(workers) as pool:
        pending: dict[int, Future[Result]] = {}
        finished: dict[int, Future[Result]] = {}  # done, waiting for the segments before them
        submitted = 0

        def submit() -> None:
            nonlocal submitted
            while submitted < n and len(pending) < workers:
                i = submitted
                pending[i] = pool.submit(
                    audit_segment, segments[i], until, tracked, (), f"audit[segment {i + 1}/{n}]")
                submitted += 1

        dirty = None
        for i in range(n):
            try:
                # A worker takes the next segment as soon as it is free, even while an earlier
                # segment still runs on the other: the results are taken in order all the same.
                submit()
                while i not in finished:
                    wait(pending.values(), return_when=FIRST_COMPLETED)
                    for j in [j for j, f in pending.items() if f.done()]:
                        finished[j] = pending.pop(j)
                    submit()
                found, report, ids = finished.pop(i).result()
            except BrokenProcessPool as exc:
                print(f"audit: a worker process died ({exc}); auditing from segment {i + 1}/{n} "
                      "in this process", file=err or sys.stderr)
                dirty = i
                break
            if found or not seen.isdisjoint(ids):
                dirty = i
                break
            seen.update(ids)
            reports.append(report)
        if dirty is None:
            return [], merge_segments(reports)
        # Inside the pool's block: the segments still running finish beside this run, and the
        # pool is shut down (waiting for them) only after it.
        return _audit_rest(segments, dirty, until, tracked, seen, reports)


def _audit_rest(segments: list[Segment], dirty: int, until: int | None, tracked: int | None,
                seen: set[str], reports: list[dict[str, Any]]) -> tuple[list[AuditViolation], dict[str, Any]]:
    """One run in this process from segment ``dirty``'s start to the end."""
    n = len(segments)
    tail = Segment(
        segments[dirty].start, None, {q: s for seg in segments[dirty:] for q, s in seg.snapshots.items()}
    )
    label = "audit" if dirty == 0 else f"audit[from segment {dirty + 1}/{n}]"
    found, report, _ = audit_segment(tail, until, tracked, seen, label)
    return found, merge_segments([*reports, report])


def audit(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    with ExitStack() as stack:  # the workers, when started early, are shut down on every way out
        code = _audit(args, out, err, stack)
    return code


def _audit(args: argparse.Namespace, out: TextIO, err: TextIO, stack: ExitStack) -> int:
    jobs = getattr(args, "jobs", None) or os.cpu_count() or 1
    pool: ProcessPoolExecutor | None = None
    try:
        logs = open_logs(Settings.from_env())
        last = logs.last_outcome_position()
        engine_position, requests_head = logs.engine_position(), logs.last_request_position()
        tracked = engine_position if args.until is None or args.until >= last else None
        if jobs >= 2 and has_snapshots(logs):  # segments to run on workers: start them now
            pool = stack.enter_context(start_workers(jobs))
        snapshots, found = read_snapshots(logs)
        published = getattr(args, "anchor", None) or ()
        anchors = [(position, digest, stored_hash(logs, position)) for position, digest in published]
        close_logs(logs)
    except StoreError as exc:
        print(f"audit: {exc}", file=err)
        return 2
    beyond = [position for position, _, _ in anchors if args.until is not None and position > args.until]
    if beyond:
        print(f"audit: --anchor at position {beyond[0]} is beyond --until {args.until}: not audited",
              file=err)
        return 2
    started = time.perf_counter()
    size = min(last, args.until) if args.until is not None else last
    segments = plan_segments(snapshots, size)
    try:
        kept, report = run_segments(segments, args.until, tracked, jobs, err, pool)
    except StoreError as exc:
        print(f"audit: {exc}", file=err)
        return 2
    seconds = time.perf_counter() - started
    report["seconds"]["total"] = round(seconds, 3)
    report["jobs"], report["segments"] = min(jobs, len(segments)), len(segments)
    # Requests after the engine's tracking position are not consumed yet: pending, not missing.
    report["engine_tracking_position"], report["requests_log_head"] = engine_position, requests_head
    anchored = check_anchors(anchors)
    report["anchors"] = [{"position": p, "hash": h, "holds": s == h} for p, h, s in anchors]
    found += kept
    found += anchored
    report["violations"] += len(found) - len(kept)  # plus the snapshot checksums read first, the anchors
    report["events_per_second"] = round((report["outcomes"] + report["requests"]) / max(seconds, 1e-9))
    first = found[0] if found else None
    if getattr(args, "json", False):
        report["first_violation"] = first.to_json() if first else None
        report["violation_list"] = [v.to_json() for v in found[:JSON_LISTED]]
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_audit(report, found, first, out)
    return 1 if report["violations"] else 0


def _print_audit(
    report: dict[str, Any], found: list[AuditViolation], first: AuditViolation | None, out: TextIO
) -> None:
    r = report
    if not r["outcomes"]:
        print("the exchange log is empty", file=out)
    print(
        f"audited exchange log positions {r['first_position'] or 0}..{r['last_position'] or 0} "
        f"({r['outcomes']:,} outcomes, seq 1..{r['last_seq']}), {r['requests']:,} requests re-executed, "
        f"{r['snapshots_checked']} snapshots checked, in {r['seconds']['total']:.1f} s "
        f"({r['events_per_second']:,} events/s)",
        file=out,
    )
    print(f"head hash {r['head_hash']}  state hash {r['state_hash']}", file=out)
    if r["anchors"]:
        held = sum(a["holds"] for a in r["anchors"])
        print(f"anchors: {held} of {len(r['anchors'])} published head hashes found in the chain", file=out)
    print("facts: " + ", ".join(f"{k} {v:,}" for k, v in r["facts"].items()), file=out)
    for asset, row in r["assets"].items():
        p = r["precisions"].get(asset, 0)
        print(
            f"  {asset:<8} custody {format_units(row['custody'], p)}  fees {format_units(row['fees'], p)}  "
            f"users {format_units(row['users_available'], p)} available + "
            f"{format_units(row['users_frozen'], p)} frozen  sum {format_units(row['sum'], p)}",
            file=out,
        )
    if not found:
        print("CLEAN: no violations", file=out)
        return
    assert first is not None
    print(f"FAILED: {r['violations']:,} violations; FIRST affected: {first_affected(first, found)}", file=out)
    for v in found[:LISTED]:
        print(f"  {v}", file=out)
    if r["violations"] > LISTED:
        print(f"  … and {r['violations'] - LISTED:,} more (--json lists up to {JSON_LISTED:,})", file=out)


def parse_anchor(text: str) -> tuple[int, str]:
    """``POSITION:HASH`` of ``--anchor``: an exchange-log position and the sha256 (64 hex digits)
    published for the outcome there."""
    position, _, digest = text.partition(":")
    digest = digest.strip().lower()
    if not position.strip().isdigit() or int(position) < 1 or len(digest) != 64 or not all(
        c in "0123456789abcdef" for c in digest
    ):
        raise argparse.ArgumentTypeError(
            f"expected POSITION:HASH (a position of the exchange log, 1 or more, and the 64 hex "
            f"digits of the hash published for the outcome there), got {text!r}"
        )
    return int(position), digest


def stored_hash(logs: Logs, position: int) -> str | None:
    """The chain hash stored with the outcome at ``position``; None when there is none (or it
    does not decode: the audit reports that event itself)."""
    try:
        found = logs.exchange.select_notifications(start=position, limit=1, stop=position)
    except Exception as exc:
        raise StoreError(f"cannot read the exchange log at position {position}: {exc}") from exc
    if not found:
        return None
    try:
        return str(logs.decode_outcome(found[0]).hash)
    except Exception:
        return None


def check_anchors(anchors: Sequence[tuple[int, str, str | None]]) -> list[AuditViolation]:
    """A head hash published earlier (``--anchor``) must still be the chain's hash at its
    position: the chain alone cannot show a log rewritten from some point on, or truncated
    together with its tracking row; a hash kept elsewhere can."""
    found = []
    for position, published, stored in anchors:
        if stored is None:
            found.append(AuditViolation(
                "exchange", position, None, "anchor_missing",
                f"no readable outcome at position {position}, where the head hash {published} was "
                "published: the log was truncated or rewritten before it"))
        elif stored != published:
            found.append(AuditViolation(
                "exchange", position, None, "anchor_mismatch",
                f"the outcome at position {position} has the hash {stored}, not the published "
                f"{published}: the chain was rewritten at or before it"))
    return found


def first_affected(first: AuditViolation, found: list[AuditViolation]) -> str:
    """Where the first violation points, in words: when re-execution differs from an outcome
    whose own hash and link are intact, it is the request that changed."""
    where = f"{first.log} log position {first.position}"
    if first.seq is not None and first.log == "exchange":
        where += f" (outcome seq {first.seq})"
    if first.code == "reexecution_mismatch" and first.request_position is not None:
        broken = any(v.code in CHAIN_CODES and v.position == first.position for v in found)
        if not broken:
            return (
                f"requests log position {first.request_position} (its re-execution differs from the "
                f"intact outcome at exchange log position {first.position})"
            )
    return where


# -- spotex replay ------------------------------------------------------------------------------


def _parse_at(text: str) -> int | datetime:
    if text.isdigit():
        return int(text)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StoreError(f"--at {text!r} is neither a position nor an ISO time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def replay_state(logs: Logs, at: int | datetime) -> tuple[Exchange, RecordedOutcome | None]:
    """A fresh Exchange folded with the recorded facts up to a position or time."""
    try:
        return fold(iter_outcomes(logs, at if isinstance(at, int) else None, slice_facts=False), at)
    except ReplayError as exc:
        raise StoreError(str(exc)) from exc


def replay(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        at = _parse_at(args.at)
        ex, last = replay_state(open_logs(Settings.from_env()), at)
        state = render_state(ex, args.user, args.market)
    except (StoreError, ReplayError) as exc:
        print(f"replay: {exc}", file=err)
        return 2
    head = {
        "position": last.position if last else 0,
        "seq": last.seq if last else 0,
        "time": last.time if last else None,
    }
    if getattr(args, "json", False):
        print(json.dumps({**head, **state}, indent=2), file=out)
        return 0
    print(f"as of exchange log position {head['position']} (seq {head['seq']}, {head['time']})", file=out)
    print("balances:", file=out)
    for b in state["balances"]:
        print(
            f"  {b['user']:<38} {b['asset']:<8} available {b['available']:>24} frozen {b['frozen']:>24} "
            f"total {b['total']:>24}",
            file=out,
        )
    print("open orders:", file=out)
    for o in state["orders"]:
        print(
            f"  {o['order_id']} {o['user']:<16} {o['market']:<12} {o['side']:<4} {o['remaining']:>16} of "
            f"{o['quantity']:>16} @ {o['price']:>16}  holds {o['held']} {o['hold_asset']}",
            file=out,
        )
    for symbol, book in state["books"].items():
        print(f"book {symbol} ({book['status']}):", file=out)
        for p, q in reversed(book["asks"]):
            print(f"  ask {p:>16} {q:>16}", file=out)
        for p, q in book["bids"]:
            print(f"  bid {p:>16} {q:>16}", file=out)
    return 0
