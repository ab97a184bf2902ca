"""The caller's balances and ledger postings, from the read models."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, Cursor, Limit, ServicesDep
from api.errors import ERROR_RESPONSES
from api.schemas import Balances, LedgerEntry, Page

router = APIRouter(prefix="/v1", tags=["funds"], responses=ERROR_RESPONSES)


@router.get("/balances", response_model=Balances, summary="Your balances per asset")
def get_balances(user: CurrentUser, services: ServicesDep) -> Balances:
    return Balances.model_validate(services.reads.balances(user.user_id))


@router.get("/ledger", response_model=Page[LedgerEntry], summary="Your postings, newest first")
def get_ledger(user: CurrentUser, services: ServicesDep, cursor: Cursor = None, limit: Limit = 100
               ) -> Page[LedgerEntry]:
    return Page[LedgerEntry].model_validate(services.reads.ledger(user.user_id, cursor, limit))
