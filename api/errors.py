"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``.

Routes and dependencies raise ``ApiError``; FastAPI's own failures (validation, unknown routes,
wrong methods, malformed JSON) are translated here, so a client never sees another shape.
Statuses follow API.md: 400 malformed, 401, 403, 404 (also for another user's resources), 409
idempotency conflict, 422 invalid value, 429 rate limited.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer other than success; ``code`` is a stable snake_case identifier."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def unauthorized(message: str = "a valid bearer token is required") -> ApiError:
    return ApiError(401, "not_authenticated", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(roles: tuple[str, ...]) -> ApiError:
    return ApiError(403, "forbidden", f"this needs the role {' or '.join(roles)}")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def validation_details(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic's errors as ``[{"field", "type", "message"}]`` (inputs left out: no secrets echoed)."""
    return [
        {
            "field": _field(e.get("loc", ())),
            "type": str(e.get("type", "")),
            "message": str(e.get("msg", "")).removeprefix("Value error, "),
        }
        for e in errors
    ]


def from_validation(exc: ValidationError | RequestValidationError) -> ApiError:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "malformed", "the body is not valid JSON")
    details = validation_details(errors)
    if all(e.get("type") == "extra_forbidden" for e in errors):
        fields = ", ".join(d["field"] for d in details)
        return ApiError(422, "unknown_field", f"unknown field(s): {fields}", details)
    first = details[0] if details else {"field": "", "message": "invalid"}
    where = f"{first['field']}: " if first["field"] else ""
    return ApiError(422, "invalid_value", f"{where}{first['message']}", details)


def install(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        e = from_validation(exc)
        return error_response(e.status, e.code, e.message, e.details)

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {400: "malformed", 401: "not_authenticated", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(ValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)


# Documented on every route, so the OpenAPI document lists each status a client may meet.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Not authenticated"),
        (403, "Role not allowed"),
        (404, "Not found"),
        (409, "Idempotency conflict"),
        (422, "Invalid value"),
        (429, "Rate limited"),
    )
}
