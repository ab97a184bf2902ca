"""Public market data from the read models: book, trades, candles, ticker."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from api.deps import Cursor, Limit, ServicesDep
from api.errors import ERROR_RESPONSES, not_found
from api.schemas import Book, Candle, MarketSymbol, Page, Ticker, Trade

router = APIRouter(prefix="/v1/markets", tags=["market data"], responses=ERROR_RESPONSES)

SymbolPath = Annotated[MarketSymbol, Path(description="market symbol, e.g. BTC-USDT")]
Interval = Literal["1m", "5m", "15m", "1h", "4h", "1d"]
TimeBound = Annotated[
    str | None,
    Query(max_length=40, pattern=r"^[0-9T:.+\-Z ]+$",
          description="ISO 8601 time or epoch seconds, inclusive bound on open_time"),
]


@router.get("/{symbol}/book", response_model=Book, summary="Depth: price levels, quantities summed")
def get_book(symbol: SymbolPath, services: ServicesDep,
             depth: Annotated[int, Query(ge=1, le=1000)] = 50) -> Book:
    book = services.reads.book(symbol, depth)
    if book is None:
        raise not_found("market")
    return Book.model_validate(book)


@router.get("/{symbol}/trades", response_model=Page[Trade], summary="Recent trades, newest first")
def get_trades(symbol: SymbolPath, services: ServicesDep, cursor: Cursor = None, limit: Limit = 100
               ) -> Page[Trade]:
    if services.reads.market(symbol) is None:
        raise not_found("market")
    return Page[Trade].model_validate(services.reads.trades(symbol, cursor, limit))


@router.get("/{symbol}/candles", response_model=Page[Candle],
            summary="Candles ascending by open time; the latest ones without start and end")
def get_candles(symbol: SymbolPath, services: ServicesDep, interval: Interval = "1m",
                start: TimeBound = None, end: TimeBound = None, limit: Limit = 1000) -> Page[Candle]:
    if services.reads.market(symbol) is None:
        raise not_found("market")
    rows = services.reads.candles(symbol, interval, start, end, limit)
    return Page(data=[Candle.model_validate(r) for r in rows])


@router.get("/{symbol}/ticker", response_model=Ticker, summary="Last price, best bid/ask, 24 h stats")
def get_ticker(symbol: SymbolPath, services: ServicesDep) -> Ticker:
    ticker = services.reads.ticker(symbol)
    if ticker is None:
        raise not_found("market")
    return Ticker.model_validate(ticker)
