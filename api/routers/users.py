"""Onboarding: ``POST /v1/users`` registers a trader through the log (user id = request id)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import bus
from api.deps import ServicesDep, Wait
from api.errors import ERROR_RESPONSES
from api.schemas import UserCreate, UserCreated
from api.security import hash_password
from domain.commands import RegisterUser

router = APIRouter(prefix="/v1/users", tags=["users"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=UserCreated, summary="Register a trader")
async def create_user(body: UserCreate, services: ServicesDep, wait: Wait = False) -> JSONResponse:
    password_hash = await to_thread.run_sync(hash_password, body.password)
    command = RegisterUser(username=body.username, password_hash=password_hash, roles=["trader"])
    sub = await bus.submit(
        services, command, None, wait=wait,
        conflict=("username_taken", f"the username {body.username!r} is taken"),
    )
    if sub.outcome is not None:
        bus.raise_if_rejected(sub)
    return bus.accepted(sub, http_status=201, user_id=sub.request_id)
