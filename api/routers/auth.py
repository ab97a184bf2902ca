"""Log in (``POST /v1/auth/token``, JSON or the OAuth2 password form) and ``GET /v1/me``."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from pydantic import ValidationError

from api.deps import CurrentUser, ServicesDep
from api.errors import ERROR_RESPONSES, ApiError, from_validation
from api.schemas import Me, Token, TokenCreate
from api.security import TOKEN_TTL, Principal, issue_token, verify_password

router = APIRouter(prefix="/v1", tags=["auth"], responses=ERROR_RESPONSES)

_FORM = {"application/x-www-form-urlencoded", "multipart/form-data"}

TOKEN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": TokenCreate.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "username": {"type": "string"},
                        "password": {"type": "string"},
                        "scope": {"type": "string"},
                    },
                }
            },
        },
    }
}


async def _credentials(request: Request) -> TokenCreate:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media in _FORM:
            form = await request.form()
            fields = {k: form.get(k) for k in ("username", "password")}
            return TokenCreate.model_validate({k: v for k, v in fields.items() if v is not None})
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "malformed", "the body is not valid JSON") from None
        return TokenCreate.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


@router.post("/auth/token", response_model=Token, openapi_extra=TOKEN_BODY,
             summary="Log in: a bearer token for 15 minutes")
async def create_token(request: Request, services: ServicesDep) -> Token:
    creds = await _credentials(request)
    user = await to_thread.run_sync(services.reads.user_by_username, creds.username)
    ok = await to_thread.run_sync(verify_password, user["password_hash"] if user else None, creds.password)
    if not ok or user is None:
        raise ApiError(401, "invalid_credentials", "unknown username or wrong password",
                       headers={"WWW-Authenticate": "Bearer"})
    principal = Principal(user["user_id"], user["username"], tuple(user["roles"]))
    token = issue_token(services.settings.jwt_secret, principal, services.clock())
    return Token(access_token=token, expires_in=int(TOKEN_TTL.total_seconds()))


@router.get("/me", response_model=Me, summary="Who the token belongs to")
def me(user: CurrentUser) -> Me:
    return Me(user_id=user.user_id, username=user.username, roles=list(user.roles))
