"""Projection rebuild speed: events/s per read model and all together, on a real store.

    .venv/bin/python bench/projections.py [--url postgresql://postgres@127.0.0.1:5432] [-n 100000]
                                          [--users 50] [--only NAME] [--profile NAME] [--keep]

1. Creates a scratch database (``spotex_bench_<pid>``, dropped at the end unless ``--keep``), or
   SQLite files in a temporary directory with ``--url sqlite``; applies the migrations.
2. Fills the requests log with bench/engine.py's workload (limit orders near a drifting mid,
   cancels of live orders, market orders, from funded users) and lets the real sequencer decide
   them into the exchange log. Not timed.
3. Times ``rebuild`` (replay from position 0 into fresh tables beside the live ones, then the
   atomic swap) for each projection alone, then for all of them at once (each log read once for
   all, one transaction per page for all). A rate is log events (outcomes; requests for
   ``request_index``) per second of wall time; ``cpu`` is this process's CPU time (decoding,
   folding, encoding rows) — the rest of the wall time is the database server and waiting.
   The load average is printed: on a shared machine the figures move with it.

Figures go to stdout; docs/performance.md records them with the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._machine import print_machine
from bench.engine import Workload, fill_requests, scratch_store, server_info
from engine.sequencer import Sequencer
from projections.migrate import migrate_read_store
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS, resolve
from projections.store import open_read_store
from spotex.wiring import build_logs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432")
    p.add_argument("-n", type=int, default=100_000, help="order requests (default 100,000)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--only", help="one projection (default: each, then all together)")
    p.add_argument("--profile", metavar="NAME", help="cProfile one projection's rebuild")
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = p.parse_args(argv)

    print_machine()
    with scratch_store(args.url, args.keep) as settings:
        print(f"store:   {server_info(settings)}")
        logs = build_logs(settings)
        store = open_read_store(settings)
        migrate_read_store(store)
        work = Workload(args.users)
        t = time.perf_counter()
        fill_requests(logs, work.setup())
        fill_requests(logs, work.orders(args.n))
        seq = Sequencer(logs)
        while seq.step():
            pass
        outcomes = logs.last_outcome_position()
        requests = logs.last_request_position()
        facts = sum(len(o.facts) for o in logs.iter_outcomes())
        print(f"log:     {requests:,} requests → {outcomes:,} outcomes with {facts:,} facts "
              f"({work.kinds}); made in {time.perf_counter() - t:.0f} s (not timed)")
        print()

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
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'rebuild':<16} {'events':>10} {'seconds':>8} {'events/s':>10} {'cpu s':>7}")
        for name in names:
            cls = PROJECTIONS[name]
            events = requests if cls.source == "requests" else outcomes
            t, c = time.perf_counter(), time.process_time()
            rebuild(store, logs, [cls])
            dt, dc = time.perf_counter() - t, time.process_time() - c
            print(f"{name:<16} {events:>10,} {dt:>8.2f} {events / dt:>10,.0f} {dc:>7.2f}", flush=True)
        if not args.only:
            t, c = time.perf_counter(), time.process_time()
            rebuild(store, logs, list(PROJECTIONS.values()))
            dt, dc = time.perf_counter() - t, time.process_time() - c
            print(f"{'all (14)':<16} {outcomes:>10,} {dt:>8.2f} {outcomes / dt:>10,.0f} {dc:>7.2f}"
                  f"  (exchange outcomes/s; each log read once for all)")
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
