"""Point reads of the logs by id or position, which the api needs beside the read models.

None of them folds a log: each reads one event. ``request_of`` finds a request by its id (the
requests log's unique key), ``request_at`` / ``outcome_at`` read the event at a position that
the read models' event index gave.
"""

from __future__ import annotations

from uuid import UUID

from engine.exchange import RequestRecord
from engine.log import Logs, RecordedOutcome, Request


def request_of(logs: Logs, request_id: str | UUID) -> tuple[int, Request] | None:
    try:
        rid = request_id if isinstance(request_id, UUID) else UUID(str(request_id))
    except ValueError:
        return None
    return logs.request(rid)


def request_at(logs: Logs, position: int) -> RequestRecord | None:
    found = logs.read_requests(position - 1, 1)
    return found[0] if found and found[0].position == position else None


def outcome_at(logs: Logs, position: int) -> RecordedOutcome | None:
    found = logs.read_outcomes(position - 1, 1)
    return found[0] if found and found[0].position == position else None
