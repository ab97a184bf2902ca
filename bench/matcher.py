"""The matcher benchmark: ``engine.book.Book`` driven the way the engine drives it.

    python bench/matcher.py [--ops N] [--seed S] [--quick] [--repeat R]

What it measures (method and figures in ``docs/performance.md``):

1. **Throughput** on a seeded flow of operations — about 70 % limit orders near the mid (some
   of them crossing), 20 % cancels of live orders, 10 % market orders — pre-generated before
   any timing. The Book is driven with the engine's primitives, as ``engine/trading.py`` does
   without the money: ``makers()`` walked first into a plan (``plan``), then ``reduce()`` per
   fill, ``add()`` for a limit order's rest, ``remove()`` for a cancel, with an ``Order`` per
   accepted order and an id → order index as ``Exchange.orders``. The same flow is run by a
   naive loop written here (``SortedDict`` of price → ``deque``, the simplest correct matcher);
   both must agree on the number of trades, the traded lots and the final book.
2. **Cost per operation as open orders grow**: a book of 1k … 1M resting orders, then a fixed
   batch of operations whose mix keeps the book at that size; µs per operation at each size.
3. **Memory**: resident memory (VmRSS delta) of 1,000,000 resting ``domain.orders.Order``s in a
   Book, measured in a fresh child process.

Nothing here is a test: it prints figures. No money, holds, events or I/O are involved: this
is the matching core alone, the floor under the engine's cost per request.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sortedcontainers import SortedDict

from bench._machine import print_machine
from domain.orders import BUY, SELL, Order
from engine.book import Book

LIMIT, CANCEL, MARKET = 0, 1, 2
# One operation: (kind, order id, side, limit price in ticks or None, lots). A cancel names the
# order it cancels; its side, price and lots are those of that order (unused by the matchers).
Op = tuple[int, str, str, int | None, int]

SYMBOL = "BTC-USDT"
MID = 3_000_000  # ticks (30,000.00 at a 0.01 tick)
USERS = [str(uuid.UUID(int=i + 1, version=4)) for i in range(1000)]
USER = USERS[0]
# The clock of the timed sections: this process's CPU time by default, so that other work on a
# shared machine does not count as ours (on an idle machine it equals the wall clock); --clock wall.
CLOCK: list[Callable[[], float]] = [time.process_time]


def order_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# --- the flow ----------------------------------------------------------------------------------


class _Sim:
    """A minimal model of the book used only to generate the flow (untimed): it knows which
    orders are live, so that every cancel names a live order, and where the mid is."""

    def __init__(self) -> None:
        self.levels: dict[str, SortedDict] = {BUY: SortedDict(), SELL: SortedDict()}
        self.live: list[str] = []
        self.slot: dict[str, int] = {}
        self.info: dict[str, tuple[str, int]] = {}
        self.mid = MID
        self.peak = 0

    def rest(self, oid: str, side: str, price: int, lots: int) -> None:
        key = -price if side == BUY else price
        self.levels[side].setdefault(key, OrderedDict())[oid] = lots
        self.slot[oid] = len(self.live)
        self.live.append(oid)
        self.info[oid] = (side, price)
        self.peak = max(self.peak, len(self.live))

    def _forget(self, oid: str) -> None:
        i = self.slot.pop(oid)
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.slot[last] = i
        del self.info[oid]

    def cancel(self, oid: str) -> None:
        side, price = self.info[oid]
        key = -price if side == BUY else price
        levels = self.levels[side]
        queue = levels[key]
        del queue[oid]
        if not queue:
            del levels[key]
        self._forget(oid)

    def take(self, side: str, price: int | None, lots: int) -> int:
        levels = self.levels[SELL if side == BUY else BUY]
        bound = None if price is None else (price if side == BUY else -price)
        while lots and levels:
            key, queue = levels.peekitem(0)
            if bound is not None and key > bound:
                break
            oid = next(iter(queue))
            fill = min(queue[oid], lots)
            queue[oid] -= fill
            lots -= fill
            if queue[oid] == 0:
                del queue[oid]
                self._forget(oid)
                if not queue:
                    del levels[key]
        return lots

    def update_mid(self) -> None:
        bids, asks = self.levels[BUY], self.levels[SELL]
        if bids and asks:
            self.mid = (-bids.peekitem(0)[0] + asks.peekitem(0)[0]) // 2
        elif bids:
            self.mid = -bids.peekitem(0)[0] + 1
        elif asks:
            self.mid = asks.peekitem(0)[0] - 1

    def size(self) -> int:
        return len(self.live)


def _limit(rng: random.Random, sim: _Sim) -> Op:
    side = BUY if rng.random() < 0.5 else SELL
    # Near the mid: most within a few dozen ticks, about one in nine priced through it (those
    # that reach the other side's best price trade).
    offset = int(rng.expovariate(1 / 25)) - 3
    price = sim.mid - offset if side == BUY else sim.mid + offset
    return (LIMIT, order_id(rng), side, max(price, 1), 1 + int(rng.expovariate(1 / 8)))


def _market(rng: random.Random) -> Op:
    side = BUY if rng.random() < 0.5 else SELL
    return (MARKET, order_id(rng), side, None, 1 + int(rng.expovariate(1 / 30)))


def _cancel(rng: random.Random, sim: _Sim) -> Op:
    oid = sim.live[rng.randrange(len(sim.live))]
    side, price = sim.info[oid]
    return (CANCEL, oid, side, price, 0)


def _play(sim: _Sim, op: Op) -> None:
    kind, oid, side, price, lots = op
    if kind == CANCEL:
        sim.cancel(oid)
        return
    rest = sim.take(side, price, lots)
    if kind == LIMIT and rest:
        assert price is not None
        sim.rest(oid, side, price, rest)
    sim.update_mid()


def generate_flow(n: int, seed: int) -> tuple[list[Op], dict[str, int]]:
    """``n`` operations: ~70 % limit, ~20 % cancel of a live order, ~10 % market; and how big
    the book got (resting orders at the end and at the peak, levels at the end)."""
    rng = random.Random(seed)
    sim = _Sim()
    ops: list[Op] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.2 and sim.live:
            op = _cancel(rng, sim)
        elif r < 0.3:
            op = _market(rng)
        else:
            op = _limit(rng, sim)
        _play(sim, op)
        ops.append(op)
    levels = len(sim.levels[BUY]) + len(sim.levels[SELL])
    return ops, {"resting": sim.size(), "peak": sim.peak, "levels": levels}


def resting_orders(n: int, seed: int) -> list[Op]:
    """``n`` non-crossing limit orders, half a side, about 20 per level on ``n / 40`` levels a
    side: the initial book of the scaling runs."""
    rng = random.Random(seed)
    width = max(1, n // 40)
    out: list[Op] = []
    for i in range(n):
        side = BUY if i % 2 == 0 else SELL
        distance = 1 + rng.randrange(width)
        price = MID - distance if side == BUY else MID + distance
        out.append((LIMIT, order_id(rng), side, price, 1 + int(rng.expovariate(1 / 8))))
    return out


def steady_flow(initial: Sequence[Op], n: int, seed: int) -> list[Op]:
    """``n`` operations against the book ``initial`` that keep its size: a limit order near the
    mid while the book is at or below its size, else a cancel (2 in 3) or a market order."""
    rng = random.Random(seed)
    sim = _Sim()
    for op in initial:
        _play(sim, op)
    target = sim.size()
    ops: list[Op] = []
    for _ in range(n):
        if sim.size() <= target:
            op = _limit(rng, sim)
        elif rng.random() < 2 / 3:
            op = _cancel(rng, sim)
        else:
            op = _market(rng)
        _play(sim, op)
        ops.append(op)
    return ops


# --- the two matchers --------------------------------------------------------------------------


class Result:
    __slots__ = ("levels", "resting", "seconds", "traded", "trades")

    def __init__(self, seconds: float, trades: int, traded: int, resting: int, levels: str) -> None:
        self.seconds, self.trades, self.traded = seconds, trades, traded
        self.resting, self.levels = resting, levels


def new_order(op: Op) -> Order:
    kind, oid, side, price, lots = op
    return Order(
        oid,
        USER,  # no self-trade prevention here: who owns an order does not matter to the book
        SYMBOL,
        side,
        "limit" if kind == LIMIT else "market",
        price,
        lots,
        None,
        0,
        "USDT" if side == BUY else "BTC",
        "GTC" if kind == LIMIT else "IOC",
        False,
        "cancel_resting",
        None,
    )


def load_book(initial: Sequence[Op]) -> tuple[Book, dict[str, Order]]:
    book = Book(SYMBOL)
    orders: dict[str, Order] = {}
    for op in initial:
        order = new_order(op)
        book.add(order)
        orders[order.order_id] = order
    return book, orders


def run_book(ops: Sequence[Op], book: Book | None = None, orders: dict[str, Order] | None = None) -> Result:
    """The engine's way: plan by walking ``makers()``, then ``reduce()`` each fill, ``add()`` the
    rest of a limit order, ``remove()`` on cancel; orders found by id in an index."""
    if book is None or orders is None:
        book, orders = Book(SYMBOL), {}
    makers, reduce, add, remove = book.makers, book.reduce, book.add, book.remove
    trades = traded = 0
    gc.collect()
    t0 = CLOCK[0]()
    for op in ops:
        kind = op[0]
        if kind == CANCEL:
            remove(orders.pop(op[1]))
            continue
        kind, oid, side, price, lots = op
        # As the OrderAccepted applier does (domain.orders.Order), inlined to spare a call.
        taker = Order(
            oid,
            USER,
            SYMBOL,
            side,
            "limit" if kind == LIMIT else "market",
            price,
            lots,
            None,
            0,
            "USDT" if side == BUY else "BTC",
            "GTC" if kind == LIMIT else "IOC",
            False,
            "cancel_resting",
            None,
        )
        orders[taker.order_id] = taker
        want = taker.remaining
        steps = []
        for maker in makers(side, price):
            fill = maker.remaining if maker.remaining < want else want
            steps.append((maker, fill))
            want -= fill
            if want == 0:
                break
        for maker, fill in steps:
            reduce(maker, fill)
            taker.remaining -= fill
            if maker.remaining == 0:
                del orders[maker.order_id]
            trades += 1
            traded += fill
        if taker.remaining and kind == LIMIT:
            add(taker)
        else:
            del orders[taker.order_id]
    seconds = CLOCK[0]() - t0
    assert not book.check(), book.check()[:3]
    digest = json.dumps([book.depth(BUY), book.depth(SELL)])
    return Result(seconds, trades, traded, len(orders), digest)


def run_naive(ops: Sequence[Op]) -> Result:
    """The simplest correct matcher: a SortedDict of price → deque of [id, lots] per side, an
    id → (side, price, entry) index for cancels, deque.remove to cancel."""
    bids: SortedDict = SortedDict()  # price → deque, best = last
    asks: SortedDict = SortedDict()  # price → deque, best = first
    index: dict[str, tuple[SortedDict, Any, list[Any]]] = {}
    trades = traded = 0
    gc.collect()
    t0 = CLOCK[0]()
    for kind, oid, side, price, lots in ops:
        if kind == CANCEL:
            levels, p, entry = index.pop(oid)
            queue = levels[p]
            queue.remove(entry)
            if not queue:
                del levels[p]
            continue
        if side == BUY:
            while lots and asks:
                p, queue = asks.peekitem(0)
                if price is not None and p > price:
                    break
                entry = queue[0]
                fill = entry[1] if entry[1] < lots else lots
                entry[1] -= fill
                lots -= fill
                trades += 1
                traded += fill
                if entry[1] == 0:
                    queue.popleft()
                    del index[entry[0]]
                    if not queue:
                        del asks[p]
            own = bids
        else:
            while lots and bids:
                p, queue = bids.peekitem(-1)
                if price is not None and p < price:
                    break
                entry = queue[0]
                fill = entry[1] if entry[1] < lots else lots
                entry[1] -= fill
                lots -= fill
                trades += 1
                traded += fill
                if entry[1] == 0:
                    queue.popleft()
                    del index[entry[0]]
                    if not queue:
                        del bids[p]
            own = asks
        if lots and kind == LIMIT:
            entry = [oid, lots]
            queue = own.get(price)
            if queue is None:
                queue = own[price] = deque()
            queue.append(entry)
            index[oid] = (own, price, entry)
    seconds = CLOCK[0]() - t0
    depth = [
        [(p, sum(e[1] for e in q)) for p, q in reversed(bids.items())],
        [(p, sum(e[1] for e in q)) for p, q in asks.items()],
    ]
    return Result(seconds, trades, traded, len(index), json.dumps(depth))


# --- measurements ------------------------------------------------------------------------------


def _runs(times: Sequence[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def throughput(n_ops: int, seed: int, repeat: int) -> bool:
    t0 = time.perf_counter()
    ops, shape = generate_flow(n_ops, seed)
    kinds = [0, 0, 0]
    for op in ops:
        kinds[op[0]] += 1
    print(
        f"\n1. throughput: {n_ops:,} operations, seed {seed}, generated in {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"   mix {kinds[LIMIT] / n_ops:.1%} limit, {kinds[CANCEL] / n_ops:.1%} cancel, "
        f"{kinds[MARKET] / n_ops:.1%} market; book at the end {shape['resting']:,} resting orders on "
        f"{shape['levels']:,} levels (peak {shape['peak']:,} orders)"
    )
    books: list[Result] = []
    naives: list[Result] = []
    for _ in range(repeat):  # interleaved, so that a noisy moment hits both alike
        books.append(run_book(ops))
        naives.append(run_naive(ops))
    book = min(books, key=lambda r: r.seconds)
    naive = min(naives, key=lambda r: r.seconds)
    book_rate, naive_rate = n_ops / book.seconds, n_ops / naive.seconds
    print(f"   best of {repeat} runs each, interleaved:")
    print(
        f"   engine.book.Book : {book_rate:>9,.0f} ops/s  {book.seconds * 1e6 / n_ops:5.2f} µs/op"
        f"   (runs {_runs([r.seconds for r in books])} s)"
    )
    print(
        f"   naive loop       : {naive_rate:>9,.0f} ops/s  {naive.seconds * 1e6 / n_ops:5.2f} µs/op"
        f"   (runs {_runs([r.seconds for r in naives])} s)"
    )
    print(
        f"   Book / naive     : {book_rate / naive_rate:.2f} (ratio of rates; > 1 means the Book is faster)"
    )
    same = all(
        (r.trades, r.traded, r.resting, r.levels) == (book.trades, book.traded, book.resting, book.levels)
        for r in books + naives
    )
    print(
        f"   sanity: Book {book.trades:,} trades, {book.traded:,} lots traded, {book.resting:,} resting; "
        f"naive {naive.trades:,} trades, {naive.traded:,} lots, {naive.resting:,} resting; "
        f"final depth {'identical' if book.levels == naive.levels else 'DIFFERENT'}"
        f" → {'OK' if same else 'MISMATCH'}"
    )
    return same


def scaling(sizes: Sequence[int], batch: int, seed: int, repeat: int) -> None:
    print(
        f"\n2. cost per operation as open orders grow: a book of N resting orders (~20 a level), then "
        f"{batch:,} operations that keep it at N; best of {repeat}"
    )
    base = 0.0
    for size in sizes:
        initial = resting_orders(size, seed + size)
        ops = steady_flow(initial, batch, seed + 2 * size)
        if size == sizes[0]:
            kinds = [0, 0, 0]
            for op in ops:
                kinds[op[0]] += 1
            print(
                f"   mix {kinds[LIMIT] / batch:.0%} limit, {kinds[CANCEL] / batch:.0%} cancel, "
                f"{kinds[MARKET] / batch:.0%} market (what keeps the size; the same at every size)"
            )
        times = []
        for _ in range(repeat):
            book, orders = load_book(initial)
            times.append(run_book(ops, book, orders).seconds)
            del book, orders
            gc.collect()
        us = min(times) * 1e6 / batch
        base = base or us
        print(
            f"   {size:>9,} resting ({max(1, size // 40):>6,} levels a side): {us:5.2f} µs/op  "
            f"×{us / base:.2f}   (runs {_runs(times)} s)"
        )
        del initial, ops
        gc.collect()


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(n: int, seed: int) -> None:
    """Run in a fresh process: RSS before and after resting ``n`` Orders in a Book."""
    gc.collect()
    before = _rss_kib()
    rng = random.Random(seed)
    width = max(1, n // 40)
    book = Book(SYMBOL)
    for i in range(n):
        side = BUY if i % 2 == 0 else SELL
        distance = 1 + rng.randrange(width)
        price = MID - distance if side == BUY else MID + distance
        lots = 1 + int(rng.expovariate(1 / 8))
        oid = order_id(rng)
        order = Order(
            oid,
            USERS[i % len(USERS)],
            SYMBOL,
            side,
            "limit",
            price,
            lots,
            None,
            price * lots * 1000 if side == BUY else lots * 1000,
            "USDT" if side == BUY else "BTC",
            "GTC",
            False,
            "cancel_resting",
            None,
        )
        book.add(order)
    gc.collect()
    after_book = _rss_kib()
    index = {order.order_id: order for order in book.orders_in_priority()}
    after_index = _rss_kib()
    print(
        json.dumps(
            {
                "n": n,
                "before": before,
                "book": after_book,
                "index": after_index,
                "levels": len(book.bids) + len(book.asks),
                "violations": len(book.check()),
            }
        )
    )
    del index


def memory(n: int, seed: int) -> None:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n), "--seed", str(seed)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = json.loads(out.strip().splitlines()[-1])
    book_kib = m["book"] - m["before"]
    index_kib = m["index"] - m["book"]
    print(
        f"\n3. memory of {n:,} resting Orders in a Book ({m['levels']:,} levels), fresh process, VmRSS delta:"
    )
    print(
        f"   Book with its orders: {book_kib / 1024:,.0f} MiB ({book_kib * 1024 / n:,.0f} bytes/order); "
        f"invariant violations: {m['violations']}"
    )
    print(
        f"   + the engine's id → order index: {index_kib / 1024:,.0f} MiB more "
        f"({index_kib * 1024 / n:,.0f} bytes/order)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=None, help="operations in the flow (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--quick", action="store_true", help="100k operations, sizes up to 100k")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each measurement (best is kept)")
    parser.add_argument("--batch", type=int, default=None, help="operations per size in the scaling runs")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="what the timings measure")
    parser.add_argument("--skip", action="append", default=[], choices=["throughput", "scaling", "memory"])
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.seed)
        return 0
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    n_ops = args.ops or (100_000 if args.quick else 1_000_000)
    sizes = [1_000, 10_000, 100_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    batch = args.batch or (20_000 if args.quick else 200_000)
    print("spotex matcher benchmark (bench/matcher.py)")
    print_machine()
    hashseed = os.environ.get("PYTHONHASHSEED", "random")
    print(f"  gc      {'on' if gc.isenabled() else 'off'}; PYTHONHASHSEED={hashseed}")
    print(
        f"  clock   {'process CPU time' if args.clock == 'cpu' else 'wall clock'}; load average {_loadavg()}"
    )
    ok = True
    if "throughput" not in args.skip:
        ok = throughput(n_ops, args.seed, args.repeat)
    if "scaling" not in args.skip:
        scaling(sizes, batch, args.seed, args.repeat)
    if "memory" not in args.skip:
        memory(100_000 if args.quick else 1_000_000, args.seed)
    print(f"\nload average at the end: {_loadavg()} (1, 5, 15 min; this machine has {os.cpu_count()} cores)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
