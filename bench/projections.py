"""Projection rebuild speed: events/s per read model and all together, on a real store.

    .venv/bin/python bench/projections.py [--url postgresql://postgres@127.0.0.1:5432] [-n 100000]
                                          [--users 50] [--only NAME] [--profile NAME] [--keep]
                                          [--processes 2 4] [--all-only] [--build-only] [--reuse URL]
                                          [--installed]

The compiled build (``SPOTEX_MYPYC=1``: the engine's and the read models' folds compiled with
mypyc, ``setup.py``) is measured from a virtualenv it is installed in, with ``--installed``:
``spotex`` is then imported as installed, not from this checkout (which is otherwise first on
``sys.path``). The output says which build ran, and where from.

1. Creates a scratch database (``spotex_bench_<pid>``, dropped at the end unless ``--keep``), or
   SQLite files in a temporary directory with ``--url sqlite``; applies the migrations.
2. Fills the requests log with bench/engine.py's workload (limit orders near a drifting mid,
   cancels of live orders, market orders, from funded users) and lets the real sequencer decide
   them into the exchange log. Not timed.
3. Times ``rebuild`` (replay from position 0 into fresh tables beside the live ones, then the
   atomic swap) for each projection alone, then for all of them at once in one process (each
   log read once for all, one transaction per page for all), then all of them replayed in 2
   and 4 processes (``--processes``; groups of about equal cost, as ``spotex projections
   rebuild all`` does on PostgreSQL). A rate is stored log events replayed per second of wall
   time: a read model's own log's (outcomes; requests for ``request_index``), and for ``all``
   both logs' (every outcome and every request is read, decoded and folded), as
   ``bench/audit.py`` counts; ``all``'s lines also give outcomes/s. ``cpu`` and ``server`` are
   per outcome for ``all``. ``cpu`` is the CPU time of this process and its
   children (decoding, folding, encoding rows), ``server`` that of the PostgreSQL backends
   serving it (a local server, read from /proc) — the rest of the wall time is waiting. The
   load average is printed with each line: on a shared machine the figures move with it.

``--keep --build-only`` builds a log and keeps its database; ``--reuse URL`` times rebuilds on
such a database without building the log again.

Figures go to stdout; docs/performance.md records them with the machine.
"""

# ruff: noqa: E402 - which spotex is imported (the checkout or the installed build) is chosen first
from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import importlib.util
import io
import os
import pstats
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Which spotex is measured (bench/_build.py): this checkout, or with --installed the installed build.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.append(ROOT)  # for bench._build itself
from bench._build import choose, describe

INSTALLED = choose(ROOT, sys.argv)

from bench._machine import print_machine
from bench.engine import Workload, fill_requests, scratch_store, server_info
from engine.sequencer import Sequencer
from projections.base import Projection
from projections.migrate import migrate_read_store
from projections.rebuild import Parallel, rebuild, split
from projections.registry import PROJECTIONS, resolve
from projections.store import open_read_store
from spotex.config import Settings
from spotex.wiring import build_logs


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _rss(who: int) -> str:
    return f"{resource.getrusage(who).ru_maxrss / 1024:,.0f} MiB"  # Linux: KiB


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (a parallel rebuild's)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _server_cpu(settings: Settings) -> float | None:
    """CPU seconds used so far by the PostgreSQL backends connected to the bench's database (a
    server on this host: read from /proc). Backends that ended meanwhile are not counted, so
    this is only taken around rebuilds in this process, whose pool keeps its connections."""
    url = settings.database_url
    if not url or ("@127.0.0.1" not in url and "@localhost" not in url):
        return None
    name = url.rsplit("/", 1)[-1].encode()
    total, found = 0, False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if cmdline.startswith(b"postgres: ") and b" " + name + b" " in cmdline.replace(b"\0", b" "):
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def build_info() -> str:
    """Which build runs: how many of ``setup.py``'s compiled modules on the rebuild's path are C
    extensions (the projection folds and their base, and the engine modules they import)."""
    names = ["projections.base", "projections.outcomes",
             *sorted({c.__module__ for c in PROJECTIONS.values()}),
             "domain.amounts", "domain.markets", "engine.jsondecode"]
    # (projections.outcomes is new on 1 December 2026: an older build measured with this bench
    # has none)
    return describe([n for n in names if importlib.util.find_spec(n)], "rebuild-path")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("-n", type=int, default=100_000, help="order requests (default 100,000)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--only", help="one projection (default: each, then all together)")
    p.add_argument("--profile", metavar="NAME", help="cProfile one projection's rebuild")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument("--processes", type=int, nargs="*", default=[2, 4],
                   help="also time `all` replayed in this many processes (default: 2 4)")
    p.add_argument("--all-only", action="store_true", help="skip the single-model rebuilds")
    p.add_argument("--build-only", action="store_true", help="build the log, then stop (with --keep)")
    p.add_argument("--reuse", metavar="URL", help="a database kept by --keep: skip building the log")
    p.add_argument("--installed", action="store_true",
                   help="measure spotex as installed in this Python (the compiled build), not this checkout")
    args = p.parse_args(argv)

    print_machine()
    print(build_info())
    store_cm = contextlib.nullcontext(Settings(database_url=args.reuse)) if args.reuse else \
        scratch_store(args.url, args.keep)
    with store_cm as settings:
        print(f"store:   {server_info(settings)}")
        logs = build_logs(settings)
        store = open_read_store(settings)
        migrate_read_store(store)
        work = Workload(args.users)
        t = time.perf_counter()
        if not args.reuse:
            fill_requests(logs, work.setup())
            fill_requests(logs, work.orders(args.n))
            seq = Sequencer(logs)
            while seq.step():
                pass
        outcomes = logs.last_outcome_position()
        requests = logs.last_request_position()
        facts = sum(len(o.facts) for o in logs.iter_outcomes())
        print(f"log:     {requests:,} requests → {outcomes:,} outcomes with {facts:,} facts "
              + (f"({work.kinds}); made in {time.perf_counter() - t:.0f} s (not timed)" if not args.reuse
                 else "(reused)"))
        print()
        if args.build_only:
            return 0

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            rebuild(store, logs, resolve(args.profile))
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(35)
            print(out.getvalue())
            return 0

        names = [args.only] if args.only else list(PROJECTIONS)
        print(f"load average before: {_load()}")
        print(f"{'rebuild':<22} {'events':>10} {'seconds':>8} {'events/s':>10} {'cpu s':>7} "
              f"{'cpu µs/event':>12} {'server s':>8} {'server µs':>9}  load (1 min)")

        def timed(label: str, classes: list[type[Projection]], events: int, processes: int = 1,
                  per: int | None = None) -> None:
            """``events``: the stored events the rebuild replays (the rate); ``per``: what the
            CPU figures are divided by (default: ``events``)."""
            per = per or events
            # the rebuilds before this one left their read models in reference cycles: collected
            # here, not by an automatic collection inside this one's timing (a rebuild of its
            # own, `spotex projections rebuild all`, starts without them)
            gc.collect()
            s0 = _server_cpu(settings) if processes == 1 else None
            t, c = time.perf_counter(), _cpu()
            parallel = Parallel(settings, processes) if processes > 1 else None
            rebuild(store, logs, classes, parallel=parallel)
            dt, dc = time.perf_counter() - t, _cpu() - c
            s1 = _server_cpu(settings) if s0 is not None else None
            server = f"{'—':>8} {'—':>9}"
            if s0 is not None and s1 is not None:
                server = f"{s1 - s0:>8.2f} {1e6 * (s1 - s0) / per:>9,.0f}"
            extra = f"  ({per / dt:,.0f} outcomes/s)" if per != events else ""
            print(f"{label:<22} {events:>10,} {dt:>8.2f} {events / dt:>10,.0f} {dc:>7.2f} "
                  f"{1e6 * dc / per:>12,.0f} {server}  {os.getloadavg()[0]:.1f}{extra}", flush=True)

        if not args.all_only:
            for name in names:
                cls = PROJECTIONS[name]
                timed(name, [cls], requests if cls.source == "requests" else outcomes)
        if not args.only:
            every = list(PROJECTIONS.values())
            timed("all (14), 1 process", every, outcomes + requests, per=outcomes)
            for n in args.processes:
                if n > 1:
                    timed(f"all (14), {n} processes", every, outcomes + requests, n, per=outcomes)
            print("all: events are both logs' (every outcome and every request is replayed), "
                  "cpu µs and server µs are per outcome; "
                  "cpu: this process and its children; server: the PostgreSQL backends of the "
                  "bench database (not the WAL writer's or checkpointer's share; not measured "
                  "with processes, whose backends end with them)")
            if any(n > 1 for n in args.processes):
                print("with processes, each reads and decodes the log for its own group: " + "; ".join(
                    f"{n}: " + " | ".join(", ".join(c.name for c in g) for g in split(every, n))
                    for n in args.processes if n > 1))
        print(f"load average after: {_load()}")
        # (a spawned child's max RSS on Linux starts from its parent's at the fork: not shown)
        print(f"peak memory (max RSS) of this process: {_rss(resource.RUSAGE_SELF)}")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
