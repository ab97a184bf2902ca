"""Markets: list (admin), halt, resume, delist, and read them (anyone)."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from api import bus
from api.deps import Admin, ServicesDep, Wait
from api.errors import ERROR_RESPONSES, not_found
from api.schemas import MarketCreate, MarketPublic, MarketReceipt, MarketSymbol, Page
from api.services import Services
from domain.commands import Command, DelistMarket, HaltMarket, ListMarket, ResumeMarket

router = APIRouter(prefix="/v1/markets", tags=["markets"], responses=ERROR_RESPONSES)

SymbolPath = Annotated[MarketSymbol, Path(description="market symbol, e.g. BTC-USDT")]
WITH_WAIT: dict[int | str, dict[str, Any]] = {
    200: {"model": MarketPublic, "description": "with wait: the market"}
}


async def _market_after(services: Services, sub: bus.Submitted, symbol: str) -> JSONResponse:
    if sub.outcome is None:
        return bus.accepted(sub, symbol=symbol)
    bus.raise_if_rejected(sub)
    market = await to_thread.run_sync(services.reads.market, symbol)
    if market is None:
        raise not_found("market")
    return bus.done(MarketPublic.model_validate(market).model_dump())


@router.post("", status_code=202, response_model=MarketReceipt, responses=WITH_WAIT)
async def create_market(body: MarketCreate, user: Admin, services: ServicesDep, wait: Wait = False
                        ) -> JSONResponse:
    sub = await bus.submit(services, ListMarket(**body.model_dump()), user.user_id, wait=wait)
    return await _market_after(services, sub, body.symbol)


async def _status(command: Command, symbol: str, user: Admin, services: Services, wait: bool
                  ) -> JSONResponse:
    sub = await bus.submit(services, command, user.user_id, wait=wait)
    return await _market_after(services, sub, symbol)


@router.post("/{symbol}/halt", status_code=202, response_model=MarketReceipt, responses=WITH_WAIT,
             summary="Halt: cancel-only")
async def halt_market(symbol: SymbolPath, user: Admin, services: ServicesDep, wait: Wait = False
                      ) -> JSONResponse:
    return await _status(HaltMarket(market=symbol), symbol, user, services, wait)


@router.post("/{symbol}/resume", status_code=202, response_model=MarketReceipt, responses=WITH_WAIT)
async def resume_market(symbol: SymbolPath, user: Admin, services: ServicesDep, wait: Wait = False
                        ) -> JSONResponse:
    return await _status(ResumeMarket(market=symbol), symbol, user, services, wait)


@router.post("/{symbol}/delist", status_code=202, response_model=MarketReceipt, responses=WITH_WAIT,
             summary="Delist: cancels every open order and releases its hold")
async def delist_market(symbol: SymbolPath, user: Admin, services: ServicesDep, wait: Wait = False
                        ) -> JSONResponse:
    return await _status(DelistMarket(market=symbol), symbol, user, services, wait)


@router.get("", response_model=Page[MarketPublic])
def list_markets(services: ServicesDep) -> Page[MarketPublic]:
    return Page(data=[MarketPublic.model_validate(m) for m in services.reads.markets()])


@router.get("/{symbol}", response_model=MarketPublic)
def get_market(symbol: SymbolPath, services: ServicesDep) -> MarketPublic:
    market = services.reads.market(symbol)
    if market is None:
        raise not_found("market")
    return MarketPublic.model_validate(market)
