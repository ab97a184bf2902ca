"""Operations: liveness, readiness (503 when not ready) and Prometheus metrics."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from api.deps import ServicesDep
from api.health import readiness
from api.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Alive")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "not ready"}},
            summary="Stores reachable, engine and projection lag and errors")
async def readyz(services: ServicesDep) -> JSONResponse:
    status = await to_thread.run_sync(readiness, services)
    return JSONResponse(status, status_code=200 if status["ready"] else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(services: ServicesDep) -> Response:
    body = await to_thread.run_sync(services.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
