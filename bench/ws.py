"""WebSocket fan-out: N concurrent subscribers on one market while orders flow.

    .venv/bin/python bench/ws.py [--subscribers 1000] [--rate 20] [--seconds 20] [--procs 2]
                                 [--url sqlite | postgresql://postgres@127.0.0.1:5432] [--keep]
                                 [--api-procs 0] [--spare-serve] [--api-cpu 0.25]
                                 [--deflate] [--asgi-send] [--client raw]

1. Starts the real ``spotex serve`` (api, engine, projections and the WebSocket follower in one
   process; SQLite files by default, or a scratch PostgreSQL database), lists BTC-USDT, funds two
   traders and seeds ten price levels a side.
2. Opens ``--subscribers`` WebSocket connections on loopback from ``--procs`` client processes,
   each subscribed to ``book`` and ``trades`` of BTC-USDT, and waits for every snapshot. With
   ``--api-procs K`` (PostgreSQL), K more ``spotex api`` processes serve the same database and the
   subscribers are spread evenly over all K + 1 processes (the fan-out scaling out);
   ``--spare-serve`` puts none on ``spotex serve``, so that it only runs the engine, the
   projections and the order requests, and the K api processes do all of the fan-out.
   ``--api-cpu F`` caps each of them at F of one core (a CPU cgroup of its own, as root): a small
   machine's stand-in for "one process per core", to see one process saturate and two not.
3. Flows orders at ``--rate`` per second for ``--seconds``: a resting limit order, then a market
   order that trades with the book, alternately on each side.
4. Prints: messages delivered (all subscribers) per second; the delay of each trade message from
   its request time (the api stamps it before appending; the engine commits it, the projections
   apply it, the follower reads and fans it out) to its arrival at each subscriber, p50/p90/p99/
   max — an upper bound of commit → delivery; the server's resident memory per connection
   (subscribed and idle, minus before any connection); gaps and drops seen by the clients; and the
   server's CPU use during the flow, and that CPU time per message delivered (the figure the
   others' load distorts least: compare versions with it). Then the same per server process (its
   subscribers' messages, its CPU) and, on PostgreSQL, the CPU of the database's backends (every
   connection to the scratch database: the engine's, the projections', each follower's).

The clients run on the same machine and compete with the server for its cores; the figures
include that. Figures go to ``docs/performance.md`` ("WebSocket fan-out") with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._machine import print_machine  # noqa: E402
from tests.e2e.conftest import Api, free_port, funded_traders, ok, start_server, stop_server  # noqa: E402

MARKET = "BTC-USDT"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (``spotex serve`` on PostgreSQL runs the engine and the read
    models in child processes)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        kids = [c for c, p in parent.items() if p == todo[-1]]
        todo.pop()
        out.extend(kids)
        todo.extend(kids)
    return out


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for x in pids:
        with contextlib.suppress(OSError):  # it ended meanwhile
            out[x] = cpu_seconds(x)
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(db_url: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to the database (same machine)."""
    import psycopg

    name = db_url.rsplit("/", 1)[1]
    with psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)).fetchall()
    out = {}
    for (pid,) in rows:
        with contextlib.suppress(OSError):  # it ended meanwhile
            out[pid] = cpu_seconds(pid)
    return out


class CpuCap:
    """A CPU cgroup of its own per process, capped at ``share`` of one core (cgroup v2 ``cpu.max``
    or v1 ``cpu.cfs_quota_us``; a 10 ms period, so that a capped process waits in short slices).
    Needs root; removed again by ``close``."""

    PERIOD_US = 10_000

    def __init__(self, share: float) -> None:
        self.share = share
        self.dirs: list[Path] = []

    def add(self, pid: int) -> None:
        quota = max(1000, int(self.share * self.PERIOD_US))
        v2, v1 = Path("/sys/fs/cgroup/cgroup.controllers"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if v2.exists():
            d = Path(f"/sys/fs/cgroup/spotex-bench-ws-{os.getpid()}-{pid}")
            d.mkdir()
            (d / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        elif v1.exists():
            d = Path(f"/sys/fs/cgroup/cpu/spotex-bench-ws-{os.getpid()}-{pid}")
            d.mkdir()
            (d / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (d / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            raise RuntimeError("--api-cpu: no CPU cgroup controller found")
        self.dirs.append(d)
        (d / "cgroup.procs").write_text(str(pid))

    def throttled(self) -> float:
        """Seconds the capped processes spent throttled so far."""
        total = 0.0
        for d in self.dirs:
            for line in (d / "cpu.stat").read_text().splitlines():
                key, value = line.split()
                if key == "throttled_usec":
                    total += int(value) / 1e6
                elif key == "throttled_time":  # v1: nanoseconds
                    total += int(value) / 1e9
        return total

    def close(self) -> None:
        for d in self.dirs:
            with contextlib.suppress(OSError):
                d.rmdir()


# -- subscriber processes -----------------------------------------------------------------------


def subscriber_process(url: str, n: int, ready: Any, start: Any, stop: Any, results: Any,
                       deflate: bool = False, client: str = "raw") -> None:
    if client == "raw":
        import uvloop

        uvloop.run(raw_subscribers(url, n, ready, start, stop, results))
    else:
        asyncio.run(subscribers(url, n, ready, start, stop, results, deflate))


class RawSubscriber(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) for the bench: the handshake, unmasked server frames
    parsed from the socket's bytes, masked client frames, pongs to pings, the close code. It does
    per message what a client must (find each frame, parse its JSON, check book sequences, time
    trades) and little else, so the clients take less of the cores they share with the server
    than the ``websockets`` client does (``--client websockets``)."""

    def __init__(self, host: str, shared: dict[str, Any]) -> None:
        self.host = host
        self.shared = shared
        self.buffer = b""
        self.open = False
        self.sequence: int | None = None
        self.fragments: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /v1/ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else
                                         bytes([0x80 | 126]) + struct.pack("!H", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buffer + data if self.buffer else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            head, buf = buf[:end], buf[end + 4:]
            accept = base64.b64encode(hashlib.sha1(
                (self.key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            if not head.startswith(b"HTTP/1.1 101") or accept.encode() not in head:
                self.handshake.set_exception(RuntimeError(head[:200].decode("latin-1")))
                self.transport.close()
                return
            self.open = True
            self.handshake.set_result(None)
        shared, pos, size = self.shared, 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if size - at < 2:
                    break
                n, at = struct.unpack_from("!H", buf, at)[0], at + 2
            elif n == 127:
                if size - at < 8:
                    break
                n, at = struct.unpack_from("!Q", buf, at)[0], at + 8
            if size - at < n:
                break
            payload, pos = buf[at:at + n], at + n
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments = []
                self.message(payload, now, shared)
            elif opcode == 9:
                self.send_frame(10, payload)
            elif opcode == 8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                shared["dropped" if code == 4008 else "closed"] += 1
                self.transport.close()
                return
        self.buffer = buf[pos:]

    def message(self, payload: bytes, now: float, shared: dict[str, Any]) -> None:
        m = orjson.loads(payload)
        shared["messages"] += 1
        if shared["counting"]:
            shared["counted"] += 1
        channel = m.get("channel")
        if channel == "book":
            if m["type"] == "snapshot":
                self.sequence = m["sequence"]
            elif m["type"] == "update" and self.sequence is not None:
                if m["sequence"] != self.sequence + 1:
                    shared["gaps"] += 1
                self.sequence = m["sequence"]
        elif channel == "trades" and m["type"] == "update" and shared["counting"]:
            for t in m["trades"]:
                shared["delays"].append(now - datetime.fromisoformat(t["time"]).timestamp())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.done.done():
            self.done.set_result(None)


async def counting_window(messages: Callable[[], int], n: int, ready: Any, start: Any, stop: Any,
                          counting: Callable[[bool], None]) -> float:
    """Wait until each of ``n`` subscribers has its two acks and two snapshots, say ready, count
    from ``start`` to ``stop``; the process CPU seconds of the counted window."""
    while messages() < 4 * n:
        await asyncio.sleep(0.05)
    ready.set()
    while not start.is_set():
        await asyncio.sleep(0.01)
    cpu0 = time.process_time()
    counting(True)
    while not stop.is_set():
        await asyncio.sleep(0.05)
    counting(False)
    return time.process_time() - cpu0


async def raw_subscribers(url: str, n: int, ready: Any, start: Any, stop: Any, results: Any) -> None:
    host, port = url.removeprefix("http://").split(":")
    shared: dict[str, Any] = {"messages": 0, "counted": 0, "gaps": 0, "dropped": 0, "closed": 0,
                              "counting": False, "delays": []}
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(50)

    async def open_one() -> RawSubscriber:
        async with sem:
            _, proto = await loop.create_connection(lambda: RawSubscriber(f"{host}:{port}", shared),
                                                    host, int(port))
            await asyncio.wait_for(proto.handshake, 60)
            for channel in ("book", "trades"):
                proto.send_frame(1, json.dumps({"op": "subscribe", "channel": channel,
                                                "market": MARKET}).encode())
            return proto

    conns = await asyncio.gather(*(open_one() for _ in range(n)))
    cpu = await counting_window(lambda: shared["messages"], n, ready, start, stop,
                                lambda on: shared.__setitem__("counting", on))
    for c in conns:
        if not c.transport.is_closing():
            c.send_frame(8, struct.pack("!H", 1000))
            c.transport.close()
    stats: dict[str, Any] = {k: shared[k] for k in ("messages", "counted", "gaps", "dropped", "closed")}
    stats["cpu"] = cpu
    stats["url"] = url
    results.put((stats, shared["delays"]))


async def subscribers(url: str, n: int, ready: Any, start: Any, stop: Any, results: Any,
                      deflate: bool = False) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    stats: dict[str, Any] = {"messages": 0, "counted": 0, "gaps": 0, "dropped": 0, "closed": 0}
    delays: list[float] = []
    counting = False

    async def one(ws: Any) -> None:
        nonlocal counting
        sequence = None
        try:
            async for raw in ws:
                now = time.time()
                m = orjson.loads(raw)
                stats["messages"] += 1
                if counting:
                    stats["counted"] += 1
                if m.get("channel") == "book":
                    if m["type"] == "snapshot":
                        sequence = m["sequence"]
                    elif m["type"] == "update" and sequence is not None:
                        if m["sequence"] != sequence + 1:
                            stats["gaps"] += 1
                        sequence = m["sequence"]
                elif m.get("channel") == "trades" and m["type"] == "update" and counting:
                    for t in m["trades"]:
                        delays.append(now - datetime.fromisoformat(t["time"]).timestamp())
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 4008:
                stats["dropped"] += 1
            else:
                stats["closed"] += 1

    conns = []
    sem = asyncio.Semaphore(50)

    async def open_one() -> Any:
        async with sem:
            ws = await connect(ws_url, max_size=None, ping_interval=None, open_timeout=60,
                               compression="deflate" if deflate else None)
            for channel in ("book", "trades"):
                await ws.send(json.dumps({"op": "subscribe", "channel": channel, "market": MARKET}))
            return ws

    conns = await asyncio.gather(*(open_one() for _ in range(n)))
    tasks = [asyncio.create_task(one(ws)) for ws in conns]

    def set_counting(on: bool) -> None:
        nonlocal counting
        counting = on

    stats["cpu"] = await counting_window(lambda: stats["messages"], n, ready, start, stop, set_counting)
    stats["url"] = url
    for ws in conns:
        await ws.close()
    for t in tasks:
        t.cancel()
    results.put((stats, delays))


# -- the order flow -----------------------------------------------------------------------------


async def order_flow(url: str, tokens: list[str], rate: float, seconds: float) -> tuple[int, int]:
    rng = random.Random(1)
    clients = [httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {t}"})
               for t in tokens]
    sent = errors = 0
    pending: set[asyncio.Task[None]] = set()

    async def post(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        nonlocal errors
        r = await client.post("/v1/orders", json=body)
        if r.status_code != 202:
            errors += 1

    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        side = "sell" if i % 4 < 2 else "buy"
        if i % 2 == 0:  # a maker a few ticks outside the seeded spread
            price = 100 + (1 if side == "sell" else -1) * rng.randint(1, 30) / 100
            body = {"market": MARKET, "side": side, "type": "limit", "price": f"{price:.2f}",
                    "quantity": "0.0100"}
        else:  # a taker that trades with the best level on the other side
            body = {"market": MARKET, "side": "buy" if side == "sell" else "sell", "type": "market",
                    "quantity": "0.0050"}
        task = asyncio.create_task(post(clients[i % len(clients)], body))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
        i += 1
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
    if pending:
        await asyncio.gather(*pending)
    for c in clients:
        await c.aclose()
    return sent, errors


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="orders per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--deflate", action="store_true",
                   help="clients offer permessage-deflate (the server accepts it: a zlib pass per message "
                        "and connection on both sides)")
    p.add_argument("--url", default="sqlite", help="'sqlite' or a PostgreSQL server URL (no database)")
    p.add_argument("--keep", action="store_true", help="keep the scratch PostgreSQL database")
    p.add_argument("--api-procs", type=int, default=0,
                   help="extra `spotex api` processes (PostgreSQL only) sharing the subscribers")
    p.add_argument("--spare-serve", action="store_true",
                   help="no subscribers on `spotex serve` (engine, projections, orders): only on the "
                        "--api-procs processes")
    p.add_argument("--api-cpu", type=float, default=0.0,
                   help="cap each --api-procs process at this share of one core (a CPU cgroup; root)")
    p.add_argument("--client", choices=("raw", "websockets"), default="raw",
                   help="the subscribers' client: a minimal one (default) or the websockets package's")
    p.add_argument("--asgi-send", action="store_true",
                   help="SPOTEX_WS_DIRECT=0: every message through ASGI send, not written to the transport")
    args = p.parse_args()
    if args.deflate:
        args.client = "websockets"  # the minimal client negotiates no extension
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print_machine()
    print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    backend = "SQLite" if args.url == "sqlite" else "PostgreSQL"
    print(f"ws bench: {args.subscribers} subscribers in {args.procs} client processes, book+trades of "
          f"{MARKET}, {args.rate:g} orders/s for {args.seconds:g} s, backend {backend}, "
          f"permessage-deflate {'on' if args.deflate else 'off'}, "
          f"{'SPOTEX_WS_DIRECT=0 (ASGI send)' if args.asgi_send else 'the default send path'}, "
          f"{args.client} client", flush=True)

    db_url = None
    if args.url != "sqlite":
        from bench.api import drop_database, scratch_database

        db_url = scratch_database(args.url)
    if args.api_procs and not db_url:
        p.error("--api-procs needs PostgreSQL (--url postgresql://...)")
    if args.spare_serve and not args.api_procs:
        p.error("--spare-serve needs --api-procs 1 or more")
    tmp = tempfile.TemporaryDirectory()
    server_env = {"SPOTEX_DATABASE_URL": db_url} if db_url else {}
    if args.asgi_send:
        server_env["SPOTEX_WS_DIRECT"] = "0"
    try:
        server = start_server(Path(tmp.name), server_env)
    except Exception:
        if db_url and not args.keep:
            drop_database(args.url, db_url)  # the server did not start: no scratch database left
        raise
    pid = server.proc.pid
    apis: list[subprocess.Popen[bytes]] = []
    cap = CpuCap(args.api_cpu) if args.api_cpu else None
    try:
        urls = [server.url]
        for _ in range(args.api_procs):
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
            env.update({"SPOTEX_DATABASE_URL": db_url or "", "SPOTEX_RATE_LIMITS": "off"})
            if args.asgi_send:
                env["SPOTEX_WS_DIRECT"] = "0"
            apis.append(subprocess.Popen([sys.executable, "-m", "spotex.cli", "api", "--host", "127.0.0.1",
                                          "--port", str(port)], cwd=ROOT, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if cap is not None:
                cap.add(apis[-1].pid)
            urls.append(f"http://127.0.0.1:{port}")
        if cap is not None:
            print(f"each spotex api process capped at {args.api_cpu:g} of one core (CPU cgroup, "
                  f"{CpuCap.PERIOD_US // 1000} ms period)", flush=True)
        for url in urls[1:]:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"spotex api at {url} did not start")
                time.sleep(0.2)
        anon = Api(server.url)
        admin = anon.login("admin", "admin")
        for symbol, precision in (("BTC", 8), ("USDT", 6)):
            admin.post("/v1/assets?wait=true", {"symbol": symbol, "precision": precision})
        admin.post("/v1/markets?wait=true", {"symbol": MARKET, "base": "BTC", "quote": "USDT",
                                             "tick_size": "0.01", "lot_size": "0.0001"})
        traders = funded_traders(anon, admin, "wsbench")
        for level in range(1, 11):  # a book to trade with: ten levels a side, deep enough
            for side, sign in (("buy", -1), ("sell", 1)):
                ok(traders[0].post("/v1/orders?wait=true", {
                    "market": MARKET, "side": side, "type": "limit",
                    "price": f"{100 + sign * (0.30 + level / 100):.2f}", "quantity": "100.0000"}))
        time.sleep(1)
        pids = [pid] + [a.pid for a in apis]
        rss_idle = sum(rss_kib(x) for x in pids)

        ctx = mp.get_context("spawn")
        start, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
        readies, procs = [], []
        # one client process per (server, share): each connects to one server
        serving = urls[1:] if args.spare_serve else urls
        groups = max(args.procs, len(serving))
        shares = [args.subscribers // groups + (1 if i < args.subscribers % groups else 0)
                  for i in range(groups)]
        subscribers_of = dict.fromkeys(urls, 0)
        for i, share in enumerate(shares):
            subscribers_of[serving[i % len(serving)]] += share
        t0 = time.monotonic()
        for i, share in enumerate(shares):
            ready = ctx.Event()
            proc = ctx.Process(target=subscriber_process,
                               args=(serving[i % len(serving)], share, ready, start, stop, results,
                                     args.deflate, args.client))
            proc.start()
            readies.append(ready)
            procs.append(proc)
        for ready in readies:
            if not ready.wait(300):
                raise RuntimeError("the subscribers did not all get their snapshots in 300 s")
        connect_s = time.monotonic() - t0
        time.sleep(2)
        rss_subscribed = sum(rss_kib(x) for x in pids)
        per_conn = (rss_subscribed - rss_idle) / args.subscribers
        print(f"connected and subscribed {args.subscribers} in {connect_s:.1f} s; server RSS "
              f"{rss_idle / 1024:.0f} MiB before, {rss_subscribed / 1024:.0f} MiB after: "
              f"{per_conn:.1f} KiB per connection", flush=True)

        tokens = [t.token or "" for t in traders]
        db_cpu0 = backend_cpu(db_url) if db_url else {}
        cpus0 = [cpu_seconds(x) for x in pids]
        children = descendants(pid)  # serve's engine and read models (PostgreSQL), long-lived
        children0 = cpu_of(children)
        throttled0 = cap.throttled() if cap is not None else 0.0
        w0 = time.monotonic()
        start.set()
        sent, errors = asyncio.run(order_flow(server.url, tokens, args.rate, args.seconds))
        time.sleep(2)  # the last messages
        stop.set()
        window = time.monotonic() - w0
        cpus = [cpu_seconds(x) - c0 for x, c0 in zip(pids, cpus0, strict=True)]
        children_cpu = sum(c - children0[x] for x, c in cpu_of(children).items())
        cpu = sum(cpus) + children_cpu
        db_cpu1 = backend_cpu(db_url) if db_url else {}
        rss_peak = sum(rss_kib(x) for x in pids)
        totals = {"messages": 0, "counted": 0, "gaps": 0, "dropped": 0, "closed": 0, "cpu": 0.0}
        delays: list[float] = []
        counted_by = dict.fromkeys(urls, 0)
        for _ in procs:
            stats, d = results.get(timeout=120)
            for k in totals:
                totals[k] += stats[k]
            counted_by[stats["url"]] += stats["counted"]
            delays.extend(d)
        for proc in procs:
            proc.join(timeout=60)
        delays.sort()
        trades = len(delays) / max(1, args.subscribers)
        print(f"orders sent {sent} ({sent / args.seconds:.1f}/s, {errors} errors); "
              f"trades seen per subscriber {trades:.0f}", flush=True)
        print(f"delivered {totals['counted']} messages in {window:.1f} s: "
              f"{totals['counted'] / window:,.0f} messages/s to {args.subscribers} subscribers", flush=True)
        pct = {q: percentile(delays, q) * 1000 for q in (50, 90, 99, 100)}
        print(f"delay request → delivery (trades, every subscriber): p50 {pct[50]:.1f} ms  "
              f"p90 {pct[90]:.1f} ms  p99 {pct[99]:.1f} ms  max {pct[100]:.1f} ms", flush=True)
        print(f"book gaps {totals['gaps']}, dropped as slow {totals['dropped']}, other closes "
              f"{totals['closed']}; server CPU {cpu / window * 100:.0f}% of one core during the flow "
              f"({len(pids)} process{'es' if len(pids) > 1 else ''}"
              f"{f' and serve’s {len(children)} child processes' if children else ''}), "
              f"RSS at the end {rss_peak / 1024:.0f} MiB", flush=True)
        print(f"server CPU per message delivered: {cpu / max(1, totals['counted']) * 1e6:.1f} µs "
              f"({cpu:.2f} s for {totals['counted']} messages); the clients' "
              f"{totals['cpu'] / max(1, totals['counted']) * 1e6:.1f} µs ({args.client} client)", flush=True)
        for i, (url, c) in enumerate(zip(urls, cpus, strict=True)):
            role = "spotex serve (orders in; engine, projections)" if i == 0 else "spotex api"
            n_msg = counted_by[url]
            per = f"{c / n_msg * 1e6:.1f} µs per message of its subscribers" if n_msg else "no subscribers"
            print(f"  process {i}, {role}, {subscribers_of[url]} subscribers: {n_msg / window:,.0f} "
                  f"messages/s, CPU {c / window * 100:.0f}% of one core ({c:.2f} s), {per}", flush=True)
            if i == 0 and children:
                print(f"    and its {len(children)} child processes (engine, read models): CPU "
                      f"{children_cpu / window * 100:.0f}% of one core ({children_cpu:.2f} s)", flush=True)
        if cap is not None:
            print(f"  the capped api processes were throttled {cap.throttled() - throttled0:.2f} s in all "
                  "during the flow", flush=True)
        if db_url:
            db = sum(c - db_cpu0.get(x, 0.0) for x, c in db_cpu1.items())
            print(f"  PostgreSQL backends of the database ({len(db_cpu1)} connections): CPU "
                  f"{db / window * 100:.0f}% of one core ({db:.2f} s)", flush=True)
        print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
              flush=True)
    finally:
        for a in apis:
            a.terminate()
            a.wait(timeout=30)
        if cap is not None:
            cap.close()
        code = stop_server(server)
        tmp.cleanup()
        if db_url and not args.keep:
            drop_database(args.url, db_url)
    print(f"server exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
