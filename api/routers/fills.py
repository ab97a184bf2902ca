"""The caller's fills (trades of their orders, with fee and liquidity)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, Cursor, Limit, ServicesDep
from api.errors import ERROR_RESPONSES
from api.schemas import Fill, MarketSymbol, Page

router = APIRouter(prefix="/v1/fills", tags=["orders"], responses=ERROR_RESPONSES)


@router.get("", response_model=Page[Fill], summary="Your fills, newest first")
def list_fills(
    user: CurrentUser,
    services: ServicesDep,
    market: Annotated[MarketSymbol | None, Query()] = None,
    order_id: Annotated[uuid.UUID | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[Fill]:
    page = services.reads.fills(user.user_id, market, str(order_id) if order_id else None, cursor, limit)
    return Page[Fill].model_validate(page)
