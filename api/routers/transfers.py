"""Transfers between users: available → available (trader)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import bus, edge
from api.deps import ServicesDep, Trader, Wait
from api.errors import ERROR_RESPONSES
from api.schemas import TransferCreate, TransferPublic, TransferReceipt
from domain.amounts import format_units
from domain.commands import Transfer

router = APIRouter(prefix="/v1/transfers", tags=["funds"], responses=ERROR_RESPONSES)


@router.post("", status_code=202, response_model=TransferReceipt,
             responses={200: {"model": TransferPublic, "description": "with wait: the transfer done"}})
async def create_transfer(body: TransferCreate, user: Trader, services: ServicesDep, wait: Wait = False
                          ) -> JSONResponse:
    asset = await to_thread.run_sync(services.reads.asset, body.asset)
    edge.check_amount(asset, body.amount)
    sub = await bus.submit(services, Transfer(**body.model_dump()), user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, transfer_id=sub.request_id)
    bus.raise_if_rejected(sub)
    fact = next(f for f in sub.outcome.facts if f["type"] == "Transferred")
    return bus.done(
        TransferPublic(
            transfer_id=fact["transfer_id"],
            to_username=body.to_username,
            asset=fact["asset"],
            amount=format_units(fact["amount"], asset["precision"] if asset else 0),
            reference=fact["reference"],
            position=sub.outcome.position,
        ).model_dump()
    )
