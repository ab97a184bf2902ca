"""The order hot path: place and cancel without FastAPI's routing and dependency solving.

Placing and cancelling orders is most of an exchange's traffic, and on the routes of
``api.routers.orders`` FastAPI's own work per request (matching the route, solving the
dependency graph, the exception middleware) cost several times what the request needs: a
profile of ``bench/api.py`` showed the bare framework at ~0.15 ms of CPU per request and the
order routes at ~0.8 ms. This module serves the *ordinary* case of two routes directly:

- ``POST /v1/orders`` without query parameters, a JSON body that ``OrderCreate`` and
  ``PlaceOrder`` accept, a valid bearer token with the ``trader`` role, a market whose tick and
  lot this process already knows and that the body fits;
- ``DELETE /v1/orders/{order_id}`` without query parameters, the id in its canonical form, a
  valid trader token, and an order this process placed for that same user lately.

It does exactly what the routes do (the same checks, the same command, ``bus.submit``, the same
202 receipt) and hands **everything else** — any error, ``?wait=true``, an unknown market, an
order placed elsewhere — to the FastAPI app unchanged (with the body it read), so every answer
other than the ordinary 202 still comes from the routes themselves. Nothing is handed over once
the request was appended. The OpenAPI document is the routes' own.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import bus, edge
from api.errors import ApiError, error_response
from api.schemas import OrderCreate
from api.security import Principal, bearer_principal
from api.services import Services
from domain.commands import CancelOrder, PlaceOrder
from engine import jsondecode

ORDERS = "/v1/orders"
ONE_ORDER = re.compile(r"/v1/orders/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
MAX_BODY = 64 * 1024


class _Route:
    """What ``EdgeMiddleware`` reads of a matched route for ``/metrics``: its template."""

    def __init__(self, path: str) -> None:
        self.path = path


PLACE_ROUTE, CANCEL_ROUTE = _Route(ORDERS), _Route(ORDERS + "/{order_id}")


class OrderFastPath:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if scope.get("query_string") or not path.startswith(ORDERS):
            await self.app(scope, receive, send)
        elif method == "POST" and path == ORDERS:
            await self._place(scope, receive, send)
        elif method == "DELETE" and (m := ONE_ORDER.fullmatch(path)) is not None:
            await self._cancel(scope, receive, send, m.group(1))
        else:
            await self.app(scope, receive, send)

    def _trader(self, scope: Scope) -> Principal | None:
        user = bearer_principal(self.services.settings.jwt_secret, scope["headers"])
        return user if user is not None and user.has("trader") else None

    async def _place(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await _read_body(receive)
        replay = _replaying(body, receive, complete)
        user = self._trader(scope) if complete and _is_json(scope) else None
        command = await self._placement(body, user) if user is not None else None
        if user is None or command is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = PLACE_ROUTE
        self.services.metrics.fast_path.labels(ORDERS).inc()
        try:
            sub = await bus.submit(self.services, command, user.user_id)
        except ApiError as exc:  # 409: the client order id was used with another body
            answer = error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
            await answer(scope, replay, send)
            return
        await _accepted(send, sub.receipt(order_id=sub.request_id, status="received"))

    async def _placement(self, body: bytes, user: Principal) -> PlaceOrder | None:
        """The command the route would append, or None when the route must answer instead."""
        try:
            order = OrderCreate.model_validate(jsondecode.loads(body))
            command = PlaceOrder(**order.model_dump())
        except (ValueError, ValidationError):  # (json's errors are ValueErrors)
            return None
        market = edge.known_spec(self.services, "market", order.market)
        if market is None:
            return None  # not known here yet: the route reads it (and this process keeps it)
        try:
            edge.check_price(market, order.price)
            edge.check_quantity(market, order.quantity)
            if order.quote_quantity is not None:
                quote = edge.known_spec(self.services, "asset", market["quote"])
                if quote is None:
                    return None
                edge.check_amount(quote, order.quote_quantity, "quote_quantity")
        except ApiError:
            return None
        return command

    async def _cancel(self, scope: Scope, receive: Receive, send: Send, order_id: str) -> None:
        body, complete = await _read_body(receive)
        replay = _replaying(body, receive, complete)
        user = self._trader(scope) if complete and not body else None
        oid = uuid.UUID(order_id)
        placement = bus.recent_placement(self.services, oid) if user is not None else None
        if user is None or placement is None or placement.actor != user.user_id:
            await self.app(scope, replay, send)
            return
        scope["route"] = CANCEL_ROUTE
        self.services.metrics.fast_path.labels(CANCEL_ROUTE.path).inc()
        sub = await bus.submit(self.services, CancelOrder(order_id=oid), user.user_id)
        await _accepted(send, sub.receipt(order_id=order_id, status="received"))


async def _accepted(send: Send, receipt: dict[str, Any]) -> None:
    """The routes' 202 (``bus.accepted``: a ``JSONResponse``), the same bytes and headers,
    without building a response object: orjson writes the compact JSON that ``JSONResponse``
    writes for these ids and positions."""
    body = orjson.dumps(receipt)
    await send({"type": "http.response.start", "status": 202, "headers": [
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json"
    return False


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, and whether it was read whole (False: too large or the client left)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > MAX_BODY:
            return b"".join(chunks), False


def _replaying(body: bytes, receive: Receive, complete: bool) -> Receive:
    """A ``receive`` that gives the app the body already read, then the rest as it comes."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay

