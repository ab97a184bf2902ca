"""``/v1/ws``: the WebSocket protocol of API.md over the process's ``api.streams.Hub``.

Client → server, one JSON object per message (``id`` is optional and echoed in the answer)::

    {"op": "subscribe", "channel": "book|trades|ticker|candles", "market": "BTC-USDT", "interval": "1m"}
    {"op": "unsubscribe", "channel": ..., "market": ..., "interval": ...}
    {"op": "auth", "token": "<the API's access token>"}     then   {"op": "subscribe", "channel": "user"}
    {"op": "ping"}

Server → client: ``subscribed`` / ``unsubscribed`` / ``authenticated`` / ``pong`` acks, the
channels' ``snapshot`` and ``update`` messages (``docs/websocket.md``), and errors as
``{"type": "error", "id": ..., "error": {"code", "message", "details"}}`` with the HTTP API's codes.

Every message to a client goes through its bounded queue (messages and bytes). A client that
lets it fill is closed with code 4008 and reason ``slow_consumer``; nothing waits for it and
nothing is buffered without bound. A subscribe while subscribed answers a fresh snapshot (the
way to resync after a gap). An expired token stops the ``user`` channel with a
``not_authenticated`` error; a new ``auth`` resumes it.

How a connection writes: under uvicorn's default WebSocket implementation (``websockets``
sans-I/O, no extension negotiated — ``spotex serve`` turns per-message deflate off) it writes
each message's ready-made frame (``api.channels.Outbound``, encoded once for all connections)
straight to the connection's transport, everything queued in one write, while the transport
takes writes (uvicorn's own flow control: the ``writable`` event its ``pause_writing`` clears).
That skips, per message and connection, the ASGI send chain, the UTF-8 encode and the frame
serialisation (``docs/performance.md``, "WebSocket fan-out"). The frames are the ones the ASGI
path would send, whole, so they interleave safely with uvicorn's own pings, pongs and close
frames (all written from the event loop's thread). Anything else — another server or
implementation, an extension, ``SPOTEX_WS_DIRECT=0`` — goes through ASGI ``send`` per message.

What a client that stops reading holds on the server, at most: its queue's bound, uvicorn's
transport buffer (its 64 KiB high-water mark plus one write of up to ``WRITE_CHUNK``), and the
kernel's socket send buffer — which Linux autotunes up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB)
unless ``SPOTEX_WS_SEND_BUFFER`` (bytes, ``SO_SNDBUF``) sets it per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import jwt
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect
from websockets.protocol import State

from api.channels import CHANNELS, Key, Outbound, UnknownMarket, dumps
from api.security import InvalidToken, Principal, decode_token
from api.streams import Hub
from projections.candles import PERIODS

router = APIRouter()
log = logging.getLogger("spotex.ws")

MAX_SUBSCRIPTIONS = 100
MAX_OP_BYTES = 4096
OPS_PER_SECOND, OPS_BURST = 20.0, 100.0
CLOSE_TIMEOUT = 30.0  # for the close frame to get past a slow client's full buffers
SLOW_CONSUMER = 4008
FIELDS = {"op", "id", "channel", "market", "interval", "token"}
WRITE_CHUNK = 64 * 1024  # bytes per transport write on the direct path (uvicorn's high-water mark)


class OpError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def hub_of(websocket: WebSocket) -> Hub:
    """The app's hub (made on first use, in the app's loop); ``close_hub`` at shutdown."""
    state = websocket.app.state
    hub: Hub | None = getattr(state, "ws_hub", None)
    if hub is None:
        services = state.services
        store = getattr(services.reads, "store", None)
        if store is None:
            raise RuntimeError("the WebSocket hub needs services.reads.store (projections.store.ReadStore)")
        hub = Hub.from_tuning(store, services.logs, services.settings.tuning)
        state.ws_hub = hub
    return hub


async def close_hub(app: Any) -> None:
    """Stop the follower task (the app's shutdown hook)."""
    hub: Hub | None = getattr(app.state, "ws_hub", None)
    if hub is not None:
        await hub.close()


def uvicorn_protocol(websocket: WebSocket) -> Any | None:
    """uvicorn's ``websockets`` sans-I/O protocol object behind ``websocket``, if that is it."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    # Starlette hands the endpoint uvicorn's own receive (middleware wraps send, not receive).
    proto = getattr(getattr(websocket, "_receive", None), "__self__", None)
    return proto if isinstance(proto, WebSocketsSansIOProtocol) else None


def direct_protocol(websocket: WebSocket) -> Any | None:
    """uvicorn's protocol object of an accepted ``websocket`` if whole frames may be written to
    its transport (the module docstring), else None: the ASGI path."""
    if not websocket.app.state.services.settings.tuning.ws_direct:
        return None
    proto = uvicorn_protocol(websocket)
    if proto is None:
        return None
    if (proto.conn.extensions or proto.transport is None
            or not isinstance(getattr(proto, "writable", None), asyncio.Event)
            or not hasattr(proto, "close_sent") or not hasattr(proto, "disconnected")):
        return None
    return proto


def _open(proto: Any) -> bool:
    """Data frames may still go out (no close sent or received, the socket up)."""
    return (not proto.close_sent and not proto.disconnected and proto.conn.state is State.OPEN
            and not proto.transport.is_closing())


class Connection:
    """One client: its subscriptions, its identity, and its bounded outgoing queue."""

    def __init__(self, websocket: WebSocket, hub: Hub, secret: str, direct: Any | None = None) -> None:
        self.ws = websocket
        self.hub = hub
        self.secret = secret
        self.direct = direct  # uvicorn's protocol: write frames to its transport (direct_protocol)
        self.queue: deque[Outbound] = deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()
        self.dropped = asyncio.Event()
        self.keys: set[Key] = set()
        self.principal: Principal | None = None
        self.following: str | None = None
        self.expiry: asyncio.Task[None] | None = None
        self.tokens, self.refilled = OPS_BURST, time.monotonic()

    # -- outgoing -----------------------------------------------------------------------------

    def offer(self, message: Outbound) -> None:
        """Queue without sending (``flush`` sends); a full queue drops the connection."""
        if self.dropped.is_set():
            return
        if (len(self.queue) >= self.hub.queue_messages
                or self.queued_bytes + message.size > self.hub.queue_bytes):
            self.queue.clear()
            self.queued_bytes = 0
            self.dropped.set()
            return
        self.queue.append(message)
        self.queued_bytes += message.size

    def flush(self) -> None:
        """Send what is queued now if the transport takes it, else wake the writer; never waits."""
        if not self.queue:
            return
        if self.direct is not None and self.direct.writable.is_set() and _open(self.direct):
            self._write_direct()
        if self.queue:
            self.ready.set()

    def _write_direct(self) -> None:
        """Write queued frames in order, in writes of up to WRITE_CHUNK bytes, while the
        transport takes them (uvicorn clears ``writable`` above its high-water mark)."""
        queue, proto = self.queue, self.direct
        assert proto is not None
        while queue and proto.writable.is_set():
            first = queue.popleft()
            size = first.size
            if not queue or size >= WRITE_CHUNK:
                self.queued_bytes -= size
                proto.transport.write(first.frame)
                continue
            frames = [first.frame]
            while queue and size < WRITE_CHUNK:
                m = queue.popleft()
                frames.append(m.frame)
                size += m.size
            self.queued_bytes -= size
            proto.transport.write(b"".join(frames))

    def reply(self, message: dict[str, Any], request_id: Any = None) -> None:
        if request_id is not None:
            message["id"] = request_id
        self.offer(Outbound(dumps(message)))
        self.flush()

    def error(self, code: str, message: str, details: Any = None, request_id: Any = None) -> None:
        self.reply({"type": "error", "error": {"code": code, "message": message, "details": details}},
                   request_id)

    async def writer(self) -> None:
        """Sends what ``flush`` could not: on the direct path once the transport takes writes
        again; on the ASGI path every message, one ``send`` each. Returns when the socket is no
        longer open (the reader sees the disconnect)."""
        proto = self.direct
        while True:
            await self.ready.wait()
            self.ready.clear()
            if proto is not None:
                while self.queue:
                    await proto.writable.wait()
                    if not _open(proto):
                        return
                    self._write_direct()
            else:
                while self.queue:
                    message = self.queue.popleft()
                    self.queued_bytes -= message.size
                    await self.ws.send_text(message.text)

    # -- incoming -----------------------------------------------------------------------------

    async def reader(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                data = message.get("bytes") or b""
                raw = data.decode("utf-8", "replace")
            if not self._allowed():
                self.error("rate_limited", f"at most {OPS_PER_SECOND:g} messages per second")
                continue
            await self.handle(raw)

    def _allowed(self) -> bool:
        now = time.monotonic()
        self.tokens = min(OPS_BURST, self.tokens + (now - self.refilled) * OPS_PER_SECOND)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def handle(self, raw: str) -> None:
        request_id = None
        try:
            if len(raw) > MAX_OP_BYTES:
                raise OpError("malformed", f"a message may have at most {MAX_OP_BYTES} bytes")
            try:
                op = json.loads(raw)
            except ValueError:
                raise OpError("malformed", "the message is not valid JSON") from None
            if not isinstance(op, dict):
                raise OpError("malformed", "a message must be a JSON object with an \"op\"")
            request_id = op.get("id")
            if not (request_id is None or isinstance(request_id, str | int)) or isinstance(request_id, bool):
                request_id = None
                raise OpError("invalid_value", "id must be a string or an integer")
            unknown = sorted(set(op) - FIELDS)
            if unknown:
                raise OpError("unknown_field", f"unknown field(s): {', '.join(unknown)}",
                              [{"field": f, "type": "extra_forbidden"} for f in unknown])
            kind = op.get("op")
            if kind == "ping":
                self.reply({"type": "pong", "time": datetime.now(UTC).isoformat()}, request_id)
            elif kind == "auth":
                self._auth(op, request_id)
            elif kind == "subscribe":
                await self._subscribe(op, request_id)
            elif kind == "unsubscribe":
                await self._unsubscribe(op, request_id)
            else:
                raise OpError("invalid_value", "op must be one of subscribe, unsubscribe, auth, ping",
                              {"field": "op"})
        except OpError as exc:
            self.error(exc.code, exc.message, exc.details, request_id)
        except Exception:
            log.exception("WebSocket op failed")
            self.error("internal_error", "the server failed; the op may be retried", None, request_id)

    def _auth(self, op: dict[str, Any], request_id: Any) -> None:
        token = op.get("token")
        if not isinstance(token, str) or not token:
            raise OpError("not_authenticated", "auth needs a \"token\": the API's access token")
        try:
            principal = decode_token(self.secret, token)
        except InvalidToken:
            raise OpError("not_authenticated", "the token is invalid or expired") from None
        expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])  # verified above
        if self.following is not None and self.following != principal.user_id:
            asyncio.get_running_loop().create_task(self._stop_user())
        self.principal = principal
        if self.expiry is not None:
            self.expiry.cancel()
        self.expiry = asyncio.get_running_loop().create_task(self._expire(expires))
        self.reply({"type": "authenticated", "user_id": principal.user_id, "username": principal.username,
                    "roles": list(principal.roles),
                    "expires_at": datetime.fromtimestamp(expires, UTC).isoformat()}, request_id)

    async def _expire(self, at: int) -> None:
        await asyncio.sleep(max(0.0, at - time.time()))
        self.principal = None
        if self.following is not None:
            await self._stop_user()
            self.error("not_authenticated", "the token expired: send a new auth to resume the user channel")

    async def _stop_user(self) -> None:
        user_id, self.following = self.following, None
        if user_id is not None:
            await self.hub.unfollow_user(self, user_id)

    def _key(self, op: dict[str, Any]) -> Key:
        channel = op.get("channel")
        if channel == "user":
            return ("user",)
        if channel not in CHANNELS:
            raise OpError("invalid_value", "channel must be one of book, trades, ticker, candles, user",
                          {"field": "channel"})
        market = op.get("market")
        if not isinstance(market, str) or not market or len(market) > 32:
            raise OpError("invalid_value", f"channel {channel} needs a \"market\" such as BTC-USDT",
                          {"field": "market"})
        if channel == "candles":
            interval = op.get("interval", "1m")
            if interval not in PERIODS:
                raise OpError("invalid_value", f"interval must be one of {', '.join(PERIODS)}",
                              {"field": "interval"})
            return (channel, market, interval)
        if op.get("interval") is not None:
            raise OpError("invalid_value", "interval applies to the candles channel only",
                          {"field": "interval"})
        return (channel, market)

    @staticmethod
    def _ack(kind: str, key: Key) -> dict[str, Any]:
        ack: dict[str, Any] = {"type": kind, "channel": key[0]}
        if len(key) > 1:
            ack["market"] = key[1]
        if len(key) > 2:
            ack["interval"] = key[2]
        return ack

    async def _subscribe(self, op: dict[str, Any], request_id: Any) -> None:
        key = self._key(op)
        if key not in self.keys and len(self.keys) + (self.following is not None) >= MAX_SUBSCRIPTIONS:
            raise OpError("invalid_value", f"a connection may hold at most {MAX_SUBSCRIPTIONS} subscriptions")
        if key == ("user",):
            if self.principal is None:
                raise OpError("not_authenticated",
                              "send {\"op\": \"auth\", \"token\": ...} before the user channel")
            if self.following is not None:
                await self._stop_user()
            self.reply(self._ack("subscribed", key), request_id)
            self.following = self.principal.user_id
            await self.hub.follow_user(self, self.principal.user_id)
            return
        ack = self._ack("subscribed", key)
        if request_id is not None:
            ack["id"] = request_id
        try:
            await self.hub.subscribe(self, key, before=Outbound(dumps(ack)))
        except UnknownMarket:
            raise OpError("not_found", f"no such market {key[1]}", {"field": "market"}) from None
        self.keys.add(key)

    async def _unsubscribe(self, op: dict[str, Any], request_id: Any) -> None:
        key = self._key(op)
        if key == ("user",):
            await self._stop_user()
        elif key in self.keys:
            self.keys.discard(key)
            await self.hub.unsubscribe(self, key)
        self.reply(self._ack("unsubscribed", key), request_id)

    # -- the connection's life ----------------------------------------------------------------

    async def run(self) -> None:
        reader = asyncio.create_task(self.reader())
        writer = asyncio.create_task(self.writer())
        dropped = asyncio.create_task(self.dropped.wait())
        try:
            done, _ = await asyncio.wait({reader, writer, dropped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not dropped and not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, WebSocketDisconnect | RuntimeError | OSError):
                        log.error("WebSocket connection failed", exc_info=exc)
        finally:
            for task in (reader, writer, dropped):
                task.cancel()
            if self.expiry is not None:
                self.expiry.cancel()
            await self.hub.drop(self, self.keys, self.following)
        if self.dropped.is_set():
            reason = (f"slow_consumer: more than {self.hub.queue_messages} messages or "
                      f"{self.hub.queue_bytes} bytes waiting")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(SLOW_CONSUMER, reason), CLOSE_TIMEOUT)


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    hub = hub_of(websocket)
    await websocket.accept()
    proto = uvicorn_protocol(websocket) if hub.send_buffer else None
    sock = proto.transport.get_extra_info("socket") if proto is not None and proto.transport else None
    if sock is not None:  # bound the kernel's buffer too (else it autotunes, to 4 MiB on Linux)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, hub.send_buffer)
    services = websocket.app.state.services
    direct = direct_protocol(websocket)
    services.metrics.ws_connections.labels("asgi" if direct is None else "direct").inc()
    connection = Connection(websocket, hub, services.settings.jwt_secret, direct)
    await connection.run()
