"""The ``/v1/ws`` protocol against the real server: acks, pings, errors, unsubscribe, token expiry,
and a slow client dropped with a clear close reason while the others go on.

The protocol does not depend on the backend, so this module runs one server (SQLite) with small
per-connection queue bounds, which only the slow-client test comes near.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from spotex.config import DEFAULT_JWT_SECRET
from tests.e2e.conftest import ROOT, Api, Server, fund, ok, start_server, stop_server
from tests.e2e.ws_client import WsClient, is_type


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module", params=["direct", "asgi"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Both ways a connection writes: frames straight to uvicorn's transport (the default), and
    ASGI ``send`` per message (SPOTEX_WS_DIRECT=0, as under another server)."""
    s = start_server(tmp_path_factory.mktemp("spotex-ws-protocol"),
                     {"SPOTEX_WS_MAX_QUEUE": "50", "SPOTEX_WS_MAX_QUEUE_BYTES": "20000",
                      "SPOTEX_WS_SEND_BUFFER": "16384",
                      "SPOTEX_WS_DIRECT": "1" if request.param == "direct" else "0"})
    try:
        yield s
    finally:
        assert stop_server(s) == 0, s.output()[-3000:]


def test_acks_echo_ids_and_ping_answers_pong(server: Server, market: str) -> None:
    async def scenario() -> None:
        async with WsClient(server.url) as ws:
            await ws.send(op="ping", id=7)
            pong = await ws.expect(is_type("pong"))
            assert pong["id"] == 7 and "time" in pong
            await ws.send(op="subscribe", channel="book", market=market, id="b")
            ack = await ws.expect(lambda m: m["type"] != "pong")
            assert ack == {"type": "subscribed", "channel": "book", "market": market, "id": "b"}
            snapshot = await ws.expect(is_type("snapshot", "book"))
            assert snapshot["market"] == market and isinstance(snapshot["sequence"], int)
            await ws.send(op="subscribe", channel="candles", market=market, interval="5m", id=3)
            assert await ws.expect(is_type("subscribed")) == {
                "type": "subscribed", "channel": "candles", "market": market, "interval": "5m", "id": 3}
            assert (await ws.expect(is_type("snapshot", "candles")))["interval"] == "5m"

    run(scenario())


@pytest.mark.parametrize(("raw", "code"), [
    ("not json", "malformed"),
    ("[1, 2]", "malformed"),
    ('{"op": "subscribe", "channel": "book", "market": "BTC-USDT", "depth": 5}', "unknown_field"),
    ('{"op": "dance"}', "invalid_value"),
    ('{"op": "subscribe", "channel": "orders", "market": "BTC-USDT"}', "invalid_value"),
    ('{"op": "subscribe", "channel": "book"}', "invalid_value"),
    ('{"op": "subscribe", "channel": "candles", "market": "BTC-USDT", "interval": "7m"}', "invalid_value"),
    ('{"op": "subscribe", "channel": "book", "market": "BTC-USDT", "interval": "1m"}', "invalid_value"),
    ('{"op": "subscribe", "channel": "book", "market": "NOPE-USDT"}', "not_found"),
    ('{"op": "subscribe", "channel": "user"}', "not_authenticated"),
    ('{"op": "auth", "token": "abc"}', "not_authenticated"),
    ('{"op": "ping", "id": [1]}', "invalid_value"),
])
def test_errors_are_json_messages_with_the_http_api_codes(server: Server, market: str, raw: str,
                                                           code: str) -> None:
    async def scenario() -> None:
        async with WsClient(server.url) as ws:
            assert ws.ws is not None
            await ws.ws.send(raw)
            err = await ws.expect(is_type("error"))
            assert err["error"]["code"] == code
            assert set(err["error"]) == {"code", "message", "details"} and err["error"]["message"]
            await ws.send(op="ping")  # the connection lives on
            await ws.expect(is_type("pong"))

    run(scenario())


def test_unsubscribe_stops_updates_and_subscribe_again_sends_a_fresh_snapshot(
        server: Server, admin: Api, anon: Api, market: str) -> None:
    trader, username, _ = anon.onboard("wsp")
    fund(admin, username, "USDT", "100000")

    async def scenario() -> None:
        async with WsClient(server.url) as ws:
            await ws.send(op="subscribe", channel="book", market=market)
            first = await ws.expect(is_type("snapshot", "book"))
            await asyncio.to_thread(trader.post, "/v1/orders?wait=true", {
                "market": market, "side": "buy", "type": "limit", "price": "1.00", "quantity": "5.0000"})
            update = await ws.expect(is_type("update", "book"))
            assert update["sequence"] == first["sequence"] + 1 and ["1.00", "5.0000"] in update["bids"]
            await ws.send(op="subscribe", channel="book", market=market)
            again = await ws.expect(is_type("snapshot", "book"))
            assert again["sequence"] == update["sequence"] and ["1.00", "5.0000"] in again["bids"]
            await ws.send(op="unsubscribe", channel="book", market=market, id="u")
            assert await ws.expect(is_type("unsubscribed")) == {
                "type": "unsubscribed", "channel": "book", "market": market, "id": "u"}
            await asyncio.to_thread(trader.delete, "/v1/orders?market=BTC-USDT&wait=true")
            assert [m for m in await ws.drain(0.5) if m.get("channel") == "book"] == []

    run(scenario())


def test_an_expired_token_stops_the_user_channel_until_a_new_auth(server: Server, anon: Api) -> None:
    me = ok(anon.login("alice", "alice").get("/v1/me"))
    now = datetime.now(UTC)
    short = jwt.encode({"sub": me["user_id"], "name": "alice", "roles": ["trader"],
                        "iat": int(now.timestamp()), "exp": int((now + timedelta(seconds=2)).timestamp())},
                       DEFAULT_JWT_SECRET, algorithm="HS256")

    async def scenario() -> None:
        async with WsClient(server.url) as ws:
            await ws.send(op="auth", token=short)
            assert (await ws.expect(is_type("authenticated")))["username"] == "alice"
            await ws.send(op="subscribe", channel="user")
            await ws.expect(is_type("snapshot", "user"))
            err = await ws.expect(is_type("error"), timeout=10)
            assert err["error"]["code"] == "not_authenticated" and "expired" in err["error"]["message"]
            await ws.send(op="subscribe", channel="user")
            assert (await ws.expect(is_type("error")))["error"]["code"] == "not_authenticated"
            await ws.send(op="auth", token=anon.login("alice", "alice").token)
            await ws.expect(is_type("authenticated"))
            await ws.send(op="subscribe", channel="user")
            await ws.expect(is_type("snapshot", "user"))

    run(scenario())


def test_a_slow_client_is_dropped_with_a_reason_and_others_keep_streaming(
        server: Server, anon: Api, admin: Api, market: str) -> None:
    trader, username, _ = anon.onboard("slow")
    fund(admin, username, "USDT", "1000000")
    # A deep book: each snapshot is a few kilobytes, so the snapshots the slow client asks for
    # (~300 KB) overflow what the sockets (SPOTEX_WS_SEND_BUFFER) and uvicorn's transport buffer
    # hold for it, and then its queue. (The server writes while the transport takes writes: a
    # burst of ops alone, read promptly, does not make a client slow.)
    for i in range(160):
        ok(trader.post("/v1/orders", {"market": "BTC-USDT", "side": "buy", "type": "limit",
                                      "price": f"{100 + i}.00", "quantity": "0.1000"}), 202)

    async def scenario() -> None:
        # A client that stops reading: a tiny receive buffer and no recv() calls.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = server.url.removeprefix("http://").split(":")
        sock.connect((host, int(port)))
        sock.setblocking(False)
        async with WsClient(server.url) as healthy, WsClient(server.url, sock=sock, max_queue=1) as slow:
            await healthy.send(op="subscribe", channel="book", market="BTC-USDT")
            await healthy.expect(is_type("snapshot", "book"))
            slow._reader.cancel()  # type: ignore[union-attr]  # nobody reads the slow one
            assert slow.ws is not None
            for _ in range(90):  # each answer is a full snapshot the client never reads
                await slow.ws.send('{"op": "subscribe", "channel": "book", "market": "BTC-USDT"}')
            await asyncio.sleep(1.0)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(20):
                    while True:
                        await slow.ws.recv()
            assert closed.value.rcvd is not None, f"no close frame after {time.monotonic() - started:.1f}s"
            assert closed.value.rcvd.code == 4008
            assert closed.value.rcvd.reason.startswith("slow_consumer")
            await asyncio.to_thread(trader.post, "/v1/orders?wait=true", {
                "market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1.00", "quantity": "1.0000"})
            # (updates of the seed orders, posted without wait, may come first)
            await healthy.expect(lambda m: m.get("type") == "update" and ["1.00", "1.0000"] in m["bids"])
            await healthy.send(op="ping")
            await healthy.expect(is_type("pong"))

    run(scenario())


# --- docs/websocket.md: every code block runs ---------------------------------------------------

DOC = ROOT / "docs" / "websocket.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_json_blocks_of_the_websocket_doc_are_json() -> None:
    found = blocks("json")
    assert len(found) >= 4
    for block in found:
        json.loads(block)


def test_the_signature_check_of_the_websocket_doc_runs() -> None:
    (snippet,) = [b for b in blocks("python") if "def verify" in b]
    exec(compile(snippet, str(DOC), "exec"), {})


def test_the_example_client_of_the_websocket_doc_runs(server: Server, admin: Api, market: str) -> None:
    (client,) = [b for b in blocks("python") if "asyncio.run(main())" in b]
    fund(admin, "alice", "USDT", "1000")
    alice = Api(server.url).login("alice", "alice")
    env = {**os.environ, "SPOTEX_URL": server.url, "SPOTEX_MARKET": market, "SPOTEX_SECONDS": "12"}
    proc = subprocess.Popen([sys.executable, "-c", client], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    # Its book snapshot says it is connected and subscribed (a fixed sleep was too short on a
    # loaded machine: the orders came and went before it subscribed). The user channel's
    # subscription went out with it, ahead of anything read.
    seen = [proc.stdout.readline()]
    assert "snapshot #" in seen[0], seen[0] + proc.communicate(timeout=60)[0]
    time.sleep(0.5)
    placed = ok(alice.post("/v1/orders?wait=true", {"market": market, "side": "buy", "type": "limit",
                                                    "price": "2.00", "quantity": "1.0000"}))
    ok(alice.delete(f"/v1/orders/{placed['order_id']}?wait=true"))
    out = "".join(seen) + proc.communicate(timeout=60)[0]  # it stops SPOTEX_SECONDS after connecting
    assert proc.returncode == 0, out
    assert f"book {market} snapshot #" in out, out
    assert "book #" in out, out
    assert f"order {placed['order_id'][:8]} open filled 0.0000" in out, out
    assert f"order {placed['order_id'][:8]} cancelled filled 0.0000" in out, out
