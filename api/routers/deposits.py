"""Deposits: custody credits a user (admin)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import bus, edge
from api.deps import Admin, ServicesDep, Wait
from api.errors import ERROR_RESPONSES
from api.schemas import DepositCreate, DepositPublic, DepositReceipt
from domain.amounts import format_units
from domain.commands import Deposit

router = APIRouter(prefix="/v1/deposits", tags=["funds"], responses=ERROR_RESPONSES)


@router.post("", status_code=202, response_model=DepositReceipt,
             responses={200: {"model": DepositPublic, "description": "with wait: the credited deposit"}})
async def create_deposit(body: DepositCreate, user: Admin, services: ServicesDep, wait: Wait = False
                         ) -> JSONResponse:
    asset = await to_thread.run_sync(services.reads.asset, body.asset)
    edge.check_amount(asset, body.amount)
    sub = await bus.submit(services, Deposit(**body.model_dump()), user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, deposit_id=sub.request_id)
    bus.raise_if_rejected(sub)
    fact = next(f for f in sub.outcome.facts if f["type"] == "Deposited")
    precision = asset["precision"] if asset else 0
    return bus.done(
        DepositPublic(
            deposit_id=fact["deposit_id"],
            user_id=fact["user_id"],
            username=body.username,
            asset=fact["asset"],
            amount=format_units(fact["amount"], precision),
            reference=fact["reference"],
            position=sub.outcome.position,
        ).model_dump()
    )
