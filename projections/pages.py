"""The two logs' pages as the projections read them: PostgreSQL rows fetched and decoded straight.

The library's ``select_notifications`` builds a dict, a ``UUID`` and a ``Notification`` for every
row: on PostgreSQL that costs several times the row itself (~10 µs an outcome, ~5 µs a request,
where a plain ``SELECT`` of the same rows in binary, the stream id as text, takes ~2 and ~0.7).
So on PostgreSQL the projections read the rows themselves — the statement the library runs
(``notification_id > after ORDER BY notification_id LIMIT n``: ids may have gaps, pages go by
the last id seen, never by arithmetic; rows past a stop are dropped) — and decode them as
``engine.log.Logs.decode_outcome`` / ``decode_request`` do on their fast path: the timestamp as
the only transcoded value, by the very function ``Logs`` uses (``engine.log.timestamp_only``;
the outcomes' fields are then those of ``Logs``' ``RecordedOutcome``: ``projections.outcomes``).
Any other row (another topic, more transcoded values) is read again through the library and
decoded by ``Logs`` itself, so what a projection sees is what ``Logs`` would give, value for
value (a test compares both over a whole log). Other stores (SQLite, POPO) are read through the
library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from engine.exchange import RequestRecord
from engine.log import Logs, Request, timestamp_only


class StoredRow(NamedTuple):
    """A stored event as read here: what the decoders use of a ``Notification`` (the stream id
    in PostgreSQL's text form of the uuid, which is ``str(UUID)``; None when not read)."""

    id: int
    originator_id: str | None
    originator_version: int
    topic: str
    state: bytes


Fetch = Callable[[int, int, "int | None"], list[StoredRow]]


def pg_fetch(recorder: Any, stream_id: bool) -> Fetch | None:
    """``fetch(after, limit, stop)``: the rows of a PostgreSQL recorder's table after a position,
    read directly (binary, plain tuples); ``stream_id=False`` leaves the stream id out (the
    outcomes' decoding does not use it). None for other stores."""
    datastore: Any = getattr(recorder, "datastore", None)
    if not hasattr(datastore, "schema") or not hasattr(recorder, "events_table_name"):
        return None
    # One-sided: with ``notification_id <= stop`` too, a planner without statistics on the
    # column (a table not yet analyzed) estimates the range at a fixed fraction and reads and
    # sorts all of it for each page (seen: 5x the server's CPU); rows past ``stop`` are dropped
    # here instead (at most one page read beyond it).
    query = SQL(
        "SELECT notification_id, " + ("originator_id::text" if stream_id else "NULL::text")
        + ", originator_version, topic, state FROM {}.{} WHERE notification_id > %s"
        " ORDER BY notification_id LIMIT %s"
    ).format(Identifier(datastore.schema), Identifier(recorder.events_table_name))
    make = StoredRow._make

    def fetch(after: int, limit: int, stop: int | None) -> list[StoredRow]:
        with datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as cur:
            cur.execute(query, (after, limit), prepare=True)
            rows = list(map(make, cur.fetchall()))
        if stop is not None and rows and rows[-1].id > stop:
            rows = [r for r in rows if r.id <= stop]
        return rows

    return fetch


def _timestamp_only(row: StoredRow, topic: str) -> dict[str, Any] | None:
    """The stored state decoded by ``engine.log.timestamp_only`` (the rule ``Logs`` decodes by);
    None: let ``Logs`` decode it."""
    return timestamp_only(row.state) if row.topic == topic else None


def notification_at(recorder: Any, position: int) -> Any:
    """The library's own notification at a position (the rare row decoded by ``Logs``)."""
    found = recorder.select_notifications(start=position, limit=1, stop=position)
    if not found:
        raise LookupError(f"no event at position {position} of {recorder.events_table_name}")
    return found[0]


def decode_request(logs: Logs, row: Any) -> RequestRecord:
    """A request as ``logs.decode_request`` gives it, from a ``StoredRow`` or a notification."""
    if not isinstance(row, StoredRow):
        return logs.decode_request(row)
    data = _timestamp_only(row, Request.TOPIC)
    if data is None or row.originator_id is None:
        return logs.decode_request(notification_at(logs.requests, row.id))
    return RequestRecord(
        row.originator_id, row.id, data["timestamp"].isoformat(), data["actor"], data["command"]
    )


def outcome_pages(logs: Logs) -> Callable[[int, int, int | None], Sequence[Any]]:
    """``read(after, limit, stop)``: stored outcomes (``StoredRow``s on PostgreSQL, else the
    library's notifications), undecoded."""
    fetch = pg_fetch(logs.exchange, stream_id=False)
    if fetch is not None:
        return fetch

    def read(after: int, limit: int, stop: int | None) -> Sequence[Any]:
        return logs.exchange.select_notifications(
            start=after, limit=limit, stop=stop, inclusive_of_start=False
        )

    return read


def request_pages(logs: Logs) -> Callable[[int, int, int | None], list[RequestRecord]]:
    """``read(after, limit, stop)``: requests after a position up to ``stop``, decoded."""
    fetch = pg_fetch(logs.requests, stream_id=True)
    if fetch is not None:
        pg = fetch

        def read_pg(after: int, limit: int, stop: int | None) -> list[RequestRecord]:
            return [decode_request(logs, r) for r in pg(after, limit, stop)]

        return read_pg

    def read(after: int, limit: int, stop: int | None) -> list[RequestRecord]:
        page = logs.requests.select_notifications(
            start=after, limit=limit, stop=stop, inclusive_of_start=False
        )
        return [logs.decode_request(n) for n in page]

    return read
