"""Withdrawals: a trader asks (the amount is held), an admin completes or fails it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from api import bus, edge
from api.deps import Admin, CurrentUser, ServicesDep, Trader, Wait
from api.errors import ERROR_RESPONSES, not_found
from api.reads_extra import request_of
from api.schemas import WithdrawalCreate, WithdrawalPublic, WithdrawalReceipt
from api.services import Services
from domain.commands import CompleteWithdrawal, FailWithdrawal, RequestWithdrawal

router = APIRouter(prefix="/v1/withdrawals", tags=["funds"], responses=ERROR_RESPONSES)

WithdrawalId = Annotated[uuid.UUID, Path()]
WITH_WAIT: dict[int | str, dict[str, Any]] = {
    200: {"model": WithdrawalPublic, "description": "with wait: the withdrawal"}
}


def _public(row: dict[str, object]) -> dict[str, object]:
    return WithdrawalPublic.model_validate({k: v for k, v in row.items() if k != "user_id"}).model_dump()


async def _withdrawal_after(services: Services, sub: bus.Submitted, withdrawal_id: str) -> JSONResponse:
    if sub.outcome is None:
        return bus.accepted(sub, withdrawal_id=withdrawal_id)
    row = await to_thread.run_sync(services.reads.withdrawal, withdrawal_id)
    if row is None:  # refused before it existed (e.g. insufficient funds): say why
        bus.raise_if_rejected(sub)
        raise not_found("withdrawal")
    return bus.done(_public(row))


@router.post("", status_code=202, response_model=WithdrawalReceipt, responses=WITH_WAIT)
async def create_withdrawal(body: WithdrawalCreate, user: Trader, services: ServicesDep, wait: Wait = False
                            ) -> JSONResponse:
    asset = await to_thread.run_sync(services.reads.asset, body.asset)
    edge.check_amount(asset, body.amount)
    sub = await bus.submit(services, RequestWithdrawal(**body.model_dump()), user.user_id, wait=wait)
    return await _withdrawal_after(services, sub, sub.request_id)


def _require_withdrawal(services: Services, withdrawal_id: uuid.UUID) -> None:
    found = request_of(services.logs, withdrawal_id)
    if found is None or found[1].command.get("command") != "RequestWithdrawal":
        raise not_found("withdrawal")


@router.post("/{withdrawal_id}/complete", status_code=202, response_model=WithdrawalReceipt,
             responses=WITH_WAIT, summary="Complete: debit the hold (custody pays out)")
async def complete_withdrawal(withdrawal_id: WithdrawalId, user: Admin, services: ServicesDep,
                              wait: Wait = False) -> JSONResponse:
    await to_thread.run_sync(_require_withdrawal, services, withdrawal_id)
    sub = await bus.submit(services, CompleteWithdrawal(withdrawal_id=withdrawal_id), user.user_id, wait=wait)
    if sub.outcome is not None:
        bus.raise_if_rejected(sub)
    return await _withdrawal_after(services, sub, str(withdrawal_id))


@router.post("/{withdrawal_id}/fail", status_code=202, response_model=WithdrawalReceipt,
             responses=WITH_WAIT, summary="Fail: release the hold")
async def fail_withdrawal(withdrawal_id: WithdrawalId, user: Admin, services: ServicesDep,
                          wait: Wait = False) -> JSONResponse:
    await to_thread.run_sync(_require_withdrawal, services, withdrawal_id)
    sub = await bus.submit(services, FailWithdrawal(withdrawal_id=withdrawal_id), user.user_id, wait=wait)
    if sub.outcome is not None:
        bus.raise_if_rejected(sub)
    return await _withdrawal_after(services, sub, str(withdrawal_id))


@router.get("/{withdrawal_id}", response_model=WithdrawalPublic, summary="One of your withdrawals")
def get_withdrawal(withdrawal_id: WithdrawalId, user: CurrentUser, services: ServicesDep
                   ) -> JSONResponse:
    row = services.reads.withdrawal(str(withdrawal_id))
    if row is None or row.get("user_id") != user.user_id:
        raise not_found("withdrawal")
    return bus.done(_public(row))
