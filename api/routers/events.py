"""The log itself: one event by id (the users it concerns, auditors, admins), or pages of a log.

Request events are the requests log's (event id = request id); outcome events are the exchange
log's, with event id ``uuid5(request_id, "outcome")`` (docs/read-models.md). Password hashes are
never shown: they are replaced by ``"[redacted]"``.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Path, Query

from api.deps import CurrentUser, LogReader, ServicesDep
from api.errors import ERROR_RESPONSES, not_found
from api.reads_extra import outcome_at, request_of
from api.schemas import EventPublic, Page
from api.security import Principal
from api.services import Services
from engine.exchange import RequestRecord
from engine.log import EXCHANGE_STREAM_ID, RecordedOutcome

router = APIRouter(prefix="/v1/events", tags=["events"], responses=ERROR_RESPONSES)

REDACTED = "[redacted]"
SECRET_FIELDS = ("password_hash",)
USER_FIELDS = ("user_id", "maker_user_id", "taker_user_id", "from_user_id", "to_user_id")


def _redact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if k in SECRET_FIELDS else v) for k, v in data.items()}


def request_event(r: RequestRecord) -> dict[str, Any]:
    name = r.command.get("command")
    return {
        "event_id": r.request_id,
        "position": r.position,
        "log": "requests",
        "type": name if isinstance(name, str) else "Request",
        "stream_id": r.request_id,
        "version": 1,
        "time": r.time,
        "data": {"actor": r.actor, "command": _redact(r.command)},
    }


def outcome_event(o: RecordedOutcome, event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "position": o.position,
        "log": "exchange",
        "type": "Outcome",
        "stream_id": str(EXCHANGE_STREAM_ID),
        "version": o.seq,
        "time": o.time,
        "data": {
            "request_id": o.request_id,
            "request_position": o.request_position,
            "actor": o.actor,
            "command": o.command,
            "facts": [_redact(f) for f in o.facts],
            "prev_hash": o.prev_hash,
            "hash": o.hash,
        },
    }


def concerns(user: Principal, event: dict[str, Any]) -> bool:
    """Whether the event is about the user: they sent it, or it names them."""
    data = event["data"]
    if data.get("actor") == user.user_id:
        return True
    command = data.get("command")
    if isinstance(command, dict) and user.username in (command.get("username"), command.get("to_username")):
        return True
    return any(
        f.get(field) == user.user_id for f in data.get("facts", ()) for field in USER_FIELDS
    )


def outcome_event_id(request_id: str) -> str:
    """An outcome's event id, derived from the request it answers (docs/read-models.md)."""
    return str(uuid.uuid5(uuid.UUID(request_id), "outcome"))


def _find(services: Services, event_id: uuid.UUID) -> dict[str, Any] | None:
    found = request_of(services.logs, event_id)
    if found is not None:
        position, req = found
        record = RequestRecord(str(event_id), position, req.timestamp.isoformat(), req.actor, req.command)
        return request_event(record)
    indexed = services.reads.event_position(str(event_id))
    if indexed is None or indexed.get("log") != "exchange":
        return None
    o = outcome_at(services.logs, int(indexed["position"]))
    if o is None:
        return None
    return outcome_event(o, outcome_event_id(o.request_id))


@router.get("/{event_id}", response_model=EventPublic, summary="One event of either log")
async def get_event(event_id: Annotated[uuid.UUID, Path()], user: CurrentUser, services: ServicesDep
                    ) -> EventPublic:
    event = await to_thread.run_sync(_find, services, event_id)
    if event is None or not (user.has("auditor", "admin") or concerns(user, event)):
        raise not_found("event")
    return EventPublic.model_validate(event)


def _page(services: Services, log: str, after: int, limit: int) -> dict[str, Any]:
    if log == "requests":
        data = [request_event(r) for r in services.logs.read_requests(after, limit)]
    else:
        outcomes = services.logs.read_outcomes(after, limit)
        data = [outcome_event(o, outcome_event_id(o.request_id)) for o in outcomes]
    more = len(data) == limit
    return {"data": data, "next_cursor": str(data[-1]["position"]) if data and more else None}


@router.get("", response_model=Page[EventPublic], summary="A page of a log, in position order")
async def list_events(
    user: LogReader,
    services: ServicesDep,
    log: Annotated[Literal["requests", "exchange"], Query()] = "requests",
    after: Annotated[int, Query(ge=0, description="the last position seen")] = 0,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[EventPublic]:
    start = int(cursor) if cursor is not None else after
    page = await to_thread.run_sync(_page, services, log, start, limit)
    return Page[EventPublic].model_validate(page)
