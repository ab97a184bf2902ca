"""Assets: ``POST /v1/assets`` (admin) and ``GET /v1/assets``."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import bus
from api.deps import Admin, ServicesDep, Wait
from api.errors import ERROR_RESPONSES, not_found
from api.schemas import AssetCreate, AssetPublic, AssetReceipt, Page
from domain.commands import ListAsset

router = APIRouter(prefix="/v1/assets", tags=["assets"], responses=ERROR_RESPONSES)


@router.post("", status_code=202, response_model=AssetReceipt,
             responses={200: {"model": AssetPublic, "description": "with wait: the listed asset"}})
async def create_asset(body: AssetCreate, user: Admin, services: ServicesDep, wait: Wait = False
                       ) -> JSONResponse:
    sub = await bus.submit(services, ListAsset(**body.model_dump()), user.user_id, wait=wait)
    if sub.outcome is None:
        return bus.accepted(sub, symbol=body.symbol)
    bus.raise_if_rejected(sub)
    asset = await to_thread.run_sync(services.reads.asset, body.symbol)
    if asset is None:
        raise not_found("asset")
    return bus.done(AssetPublic.model_validate(asset).model_dump())


@router.get("", response_model=Page[AssetPublic])
def list_assets(services: ServicesDep) -> Page[AssetPublic]:
    return Page(data=[AssetPublic.model_validate(a) for a in services.reads.assets()])
