"""``Annotated`` dependencies: the services, the caller, the roles a route needs, ``?wait``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer

from api.errors import forbidden, unauthorized
from api.security import InvalidToken, Principal, decode_token
from api.services import Services


# The dependencies are ``async def``: they do no I/O, and FastAPI runs a plain ``def`` dependency
# in a worker thread, a thread hop per dependency per request.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# Swagger's Authorize button posts the OAuth2 password form to this URL.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/v1/auth/token", auto_error=False)


def _principal(request: Request, token: str | None) -> Principal:
    if not token:
        raise unauthorized()
    services: Services = request.app.state.services
    try:
        return decode_token(services.settings.jwt_secret, token)
    except InvalidToken:
        raise unauthorized("the bearer token is invalid or expired") from None


async def current_user(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Principal:
    return _principal(request, token)


CurrentUser = Annotated[Principal, Depends(current_user)]


def require(*roles: str) -> object:
    # One dependency, not one on top of ``current_user``: FastAPI's cost per request grows with
    # each node of the dependency graph, and every command route has one of these.
    async def check(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Principal:
        user = _principal(request, token)
        if not user.has(*roles):
            raise forbidden(roles)
        return user

    return Depends(check)


Trader = Annotated[Principal, require("trader")]
Admin = Annotated[Principal, require("admin")]
LogReader = Annotated[Principal, require("auditor", "admin")]

Wait = Annotated[
    bool,
    Query(description="answer 200 with the resulting resource once the engine committed the "
                      "outcome and the read models show it; 202 as without wait past the limit"),
]

Limit = Annotated[int, Query(ge=1, le=1000, description="page size (default 100, max 1000)")]
Cursor = Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page")]
