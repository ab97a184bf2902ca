"""The FastAPI application: ``create_app(services)`` builds it; nothing is built at import time.

The routers follow API.md; OpenAPI at ``/openapi.json``, Swagger UI at ``/docs``. One ASGI
middleware in front of everything applies the rate limits (per IP, and per user when a valid
bearer token is present; 429 with ``Retry-After``) and records each request's count and latency
per route template for ``/metrics``.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.fastpath import OrderFastPath
from api.ratelimit import NoLimiter, retry_after_header
from api.routers import (
    assets,
    auth,
    balances,
    deposits,
    events,
    fills,
    market_data,
    markets,
    notifications,
    ops,
    orders,
    transfers,
    users,
    webhooks,
    withdrawals,
    ws,
)
from api.security import bearer_principal
from api.services import Services
from spotex.wiring import STORE_UNREACHABLE

UNLIMITED = ("/healthz", "/readyz", "/metrics")
log = logging.getLogger("spotex.api")

DESCRIPTION = """An event-sourced, ledger-first spot exchange.

Commands answer `202 {"event_id", "position", ...ids}` at once; with `?wait=true` they answer
`200` with the resulting resource once the engine committed the outcome and the read models show
it. Amounts are decimal strings. Log in at `POST /v1/auth/token` (or with **Authorize** here).
"""


class EdgeMiddleware:
    """Rate limits and request metrics, as plain ASGI (no per-request task or body copy)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.unlimited = isinstance(services.limiter, NoLimiter)
        # The ordinary place and cancel, served without FastAPI's routing (api.fastpath);
        # everything else goes on to the app.
        self.inner = OrderFastPath(app, services) if services.fast_path else app

    def _user(self, scope: Scope) -> str | None:
        user = bearer_principal(self.services.settings.jwt_secret, scope.get("headers", ()))
        return None if user is None else user.user_id

    async def _limited(self, scope: Scope) -> float | None:
        limiter = self.services.limiter
        client = scope.get("client")
        wait = await limiter.hit("ip", client[0] if client else "unknown")
        if wait is None:
            user = self._user(scope)
            if user is not None:
                wait = await limiter.hit("user", user)
        return wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status, started = 500, False

        async def send_status(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            wait = (None if self.unlimited or scope["path"] in UNLIMITED
                    else await self._limited(scope))
            if wait is not None:
                response = errors.error_response(
                    429, "rate_limited", "too many requests; retry after the time given",
                    {"retry_after": round(wait, 3)}, {"Retry-After": retry_after_header(wait)},
                )
                await response(scope, receive, send_status)
                return
            await self.inner(scope, receive, send_status)
        except Exception:
            # In front of Starlette's error middleware: what fails here (the limiter's store,
            # the fast path's append) answers the same 500 as a failing route, and is logged
            # once (a failing route's error comes here too, re-raised after its 500).
            exc = sys.exc_info()[1]
            if isinstance(exc, STORE_UNREACHABLE):  # one line each: an outage fails them all
                log.error("%s %s failed: the database is unavailable (%s: %s)", scope["method"],
                          scope["path"], type(exc).__name__, str(exc).strip())
            else:
                log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                await failure_response(exc)(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.services.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - began
            )


def internal_error() -> JSONResponse:
    return errors.error_response(500, "internal_error", "the server failed; the request may be retried")


def failure_response(exc: BaseException | None) -> JSONResponse:
    """503 ``unavailable`` (with ``Retry-After``) when the database is lost or refuses, else
    the 500 of ``internal_error``. A command that met it may or may not have been appended: its
    retry with the same ``client_order_id`` or ``reference`` is applied once."""
    if isinstance(exc, STORE_UNREACHABLE):
        return errors.error_response(
            503, "unavailable", "the database is unavailable; retry after the time given (a command "
            "retried with the same client_order_id or reference is applied once)",
            {"retry_after": 1}, {"Retry-After": "1"})
    return internal_error()


class SpotexApp(FastAPI):
    """FastAPI with ``EdgeMiddleware`` in front of its whole middleware stack.

    The edge (rate limits, request metrics, the order fast path) is the first thing a request
    meets: an ordinary order then skips Starlette's four middleware layers and their ``send``
    wrappers, which cost ~7 % of the api process's CPU under ``bench/api.py`` (py-spy). Every
    other request goes on through them as before.
    """

    edge: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is None:
            await super().__call__(scope, receive, send)
        else:
            await self.edge(scope, receive, send)


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await ws.close_hub(app)
        close = getattr(services.limiter, "close", None)
        if close is not None:
            await close()

    app = SpotexApp(
        title="spotex",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
        # /metrics is Prometheus (api.metrics); FastAPI's own OpenTelemetry hooks would only
        # look for a provider on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    errors.install(app)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return failure_response(exc)

    app.add_exception_handler(Exception, internal)
    # The order routes first: a request is matched against the routes in this order, and order
    # traffic is most of an exchange's traffic. No other router's paths start with /v1/orders.
    for module in (orders, auth, users, assets, markets, market_data, deposits, withdrawals,
                   transfers, balances, fills, events, notifications, ops, webhooks, ws):
        app.include_router(module.router)
    app.edge = EdgeMiddleware(functools.partial(FastAPI.__call__, app), services)
    services.metrics.watch(lambda: _lags(services))
    return app


def _lags(services: Services) -> dict[str, Any]:
    from api.health import readiness

    return readiness(services)
