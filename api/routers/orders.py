"""Orders: place, amend, cancel, cancel all (traders), and read your own.

The api checks the caller owns an order through the requests log (the order's id is its
placement request's id), so a cancel or amend sent right after a placement applies to it even
before any read model shows it, and another user's order is a 404 at once. Whether a cancel or
an amend succeeds is the engine's decision, in log order.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from api import bus, edge
from api.deps import CurrentUser, Cursor, Limit, ServicesDep, Trader, Wait
from api.errors import ERROR_RESPONSES, ApiError, not_found
from api.reads_extra import request_of
from api.schemas import (
    CancelAllReceipt,
    CancelledOrders,
    MarketSymbol,
    OrderAmend,
    OrderCreate,
    OrderPublic,
    OrderReceipt,
    Page,
)
from api.security import Principal
from api.services import Services
from domain.commands import AmendOrder, CancelAllOrders, CancelOrder, PlaceOrder
from engine.log import Request

router = APIRouter(prefix="/v1/orders", tags=["orders"], responses=ERROR_RESPONSES)

OrderId = Annotated[uuid.UUID, Path()]
WITH_WAIT: dict[int | str, dict[str, Any]] = {
    200: {"model": OrderPublic, "description": "with wait: the order after the engine's outcome"}
}


def received(order_id: str, request: Request | bus.Placement, market: dict[str, Any] | None
             ) -> dict[str, Any]:
    """The order as its request says, before its outcome is projected: status ``received``."""
    c = request.command
    time = request.timestamp.isoformat()
    quantity = edge.render_quantity(market, c.get("quantity"))
    return {
        "order_id": order_id,
        "client_order_id": c.get("client_order_id"),
        "market": c["market"],
        "side": c["side"],
        "type": c["type"],
        "price": edge.render_price(market, c.get("price")),
        "quantity": quantity,
        "quote_quantity": c.get("quote_quantity"),
        "filled_quantity": "0",
        "remaining_quantity": quantity,
        "filled_quote": "0",
        "average_price": None,
        "fee": "0",
        "fee_asset": None,
        "time_in_force": c.get("time_in_force", "GTC") if c["type"] == "limit" else "IOC",
        "post_only": bool(c.get("post_only", False)),
        "status": "received",
        "reject_reason": None,
        "created_at": time,
        "updated_at": time,
        "position": 0,
    }


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return OrderPublic.model_validate({k: v for k, v in row.items() if k != "user_id"}).model_dump()


def _own_placement(services: Services, user: Principal, order_id: uuid.UUID) -> Request | bus.Placement:
    """The placement request of the caller's order, or 404 (also for another user's order)."""
    request: Request | bus.Placement | None = bus.recent_placement(services, order_id)
    if request is None:
        found = request_of(services.logs, order_id)
        if found is None:
            raise not_found("order")
        request = found[1]
    if request.command.get("command") != "PlaceOrder" or request.actor != user.user_id:
        raise not_found("order")
    return request


async def own_placement(services: Services, user: Principal, order_id: uuid.UUID
                        ) -> Request | bus.Placement:
    """``_own_placement`` without leaving the event loop when this process appended the order."""
    recent = bus.recent_placement(services, order_id)
    if recent is not None:
        if recent.actor != user.user_id:
            raise not_found("order")
        return recent
    return await to_thread.run_sync(_own_placement, services, user, order_id)


def read_order(services: Services, user: Principal, order_id: str) -> dict[str, Any]:
    row = services.reads.order(order_id)
    if row is not None:
        if row.get("user_id") != user.user_id:
            raise not_found("order")
        return _public(row)
    request = _own_placement(services, user, uuid.UUID(order_id))
    return received(order_id, request, services.reads.market(request.command["market"]))


async def _order_after(services: Services, sub: bus.Submitted, user: Principal, order_id: str
                       ) -> JSONResponse:
    order = await to_thread.run_sync(read_order, services, user, order_id)
    return bus.done(order)


@router.post("", status_code=202, response_model=OrderReceipt, responses=WITH_WAIT, summary="Place an order")
async def place_order(body: OrderCreate, user: Trader, services: ServicesDep, wait: Wait = False
                      ) -> JSONResponse:
    command = PlaceOrder(**body.model_dump())
    market = await edge.market_spec(services, body.market)
    if market is not None:
        edge.check_price(market, body.price)
        edge.check_quantity(market, body.quantity)
        if body.quote_quantity is not None:
            quote = await edge.asset_spec(services, market["quote"])
            edge.check_amount(quote, body.quote_quantity, "quote_quantity")
    sub = await bus.submit(services, command, user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, order_id=sub.request_id, status="received")
    return await _order_after(services, sub, user, sub.request_id)


@router.get("/{order_id}", response_model=OrderPublic, summary="One of your orders")
def get_order(order_id: OrderId, user: CurrentUser, services: ServicesDep) -> JSONResponse:
    return bus.done(read_order(services, user, str(order_id)))


@router.get("", response_model=Page[OrderPublic], summary="Your orders, newest first")
def list_orders(
    user: CurrentUser,
    services: ServicesDep,
    market: Annotated[MarketSymbol | None, Query()] = None,
    status: Annotated[
        Literal["open", "closed", "all", "rejected", "partially_filled", "filled", "cancelled", "expired"],
        Query(description="open (open and partially filled), closed, all, or one exact status"),
    ] = "all",
    cursor: Cursor = None,
    limit: Limit = 100,
) -> JSONResponse:
    page = services.reads.orders(user.user_id, market, status, cursor, limit)
    return bus.done({"data": [_public(r) for r in page["data"]], "next_cursor": page.get("next_cursor")})


def _engine_refusal(sub: bus.Submitted) -> None:
    """A refused amend or cancel of the caller's own order: it is no longer open."""
    assert sub.outcome is not None
    fact = bus.rejection(sub.outcome)
    if fact is not None and fact.get("reason") == "unknown_order":
        raise ApiError(422, "order_not_open", "the order is not open any more",
                       {"event_id": sub.request_id, "position": sub.position})
    bus.raise_if_rejected(sub)


@router.patch("/{order_id}", status_code=202, response_model=OrderReceipt, responses=WITH_WAIT,
              summary="Amend: a reduction keeps time priority, a price change or an increase loses it")
async def amend_order(order_id: OrderId, body: OrderAmend, user: Trader, services: ServicesDep,
                      wait: Wait = False) -> JSONResponse:
    command = AmendOrder(order_id=order_id, price=body.price, quantity=body.quantity)
    placement = await own_placement(services, user, order_id)
    market = await edge.market_spec(services, placement.command["market"])
    if market is not None:
        edge.check_price(market, body.price)
        edge.check_quantity(market, body.quantity)
    sub = await bus.submit(services, command, user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, order_id=str(order_id), status="received")
    _engine_refusal(sub)
    return await _order_after(services, sub, user, str(order_id))


@router.delete("/{order_id}", status_code=202, response_model=OrderReceipt, responses=WITH_WAIT,
               summary="Cancel one order")
async def cancel_order(order_id: OrderId, user: Trader, services: ServicesDep, wait: Wait = False
                       ) -> JSONResponse:
    await own_placement(services, user, order_id)
    sub = await bus.submit(services, CancelOrder(order_id=order_id), user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, order_id=str(order_id), status="received")
    _engine_refusal(sub)
    return await _order_after(services, sub, user, str(order_id))


@router.delete("", status_code=202, response_model=CancelAllReceipt,
               responses={200: {"model": CancelledOrders, "description": "with wait: the orders cancelled"}},
               summary="Cancel all your open orders (in a market)")
async def cancel_all_orders(user: Trader, services: ServicesDep,
                            market: Annotated[MarketSymbol | None, Query()] = None,
                            wait: Wait = False) -> JSONResponse:
    sub = await bus.submit(services, CancelAllOrders(market=market), user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, market=market)
    bus.raise_if_rejected(sub)
    cancelled = [f["order_id"] for f in sub.outcome.facts if f["type"] == "OrderClosed"]
    return bus.done(CancelledOrders(event_id=sub.request_id, position=sub.position, market=market,
                                    cancelled=cancelled).model_dump())


