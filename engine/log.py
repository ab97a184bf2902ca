"""The two logs on the ``eventsourcing`` library's recorders, and the engine's snapshots.

``requests``: one stream per request (its id is the request's ``event_id``), appended by the api;
a retried command with an idempotency key maps to the same stream and the store's unique key
refuses the second insert. ``exchange``: one stream of outcomes whose versions count 1, 2, 3…,
written only by the engine, each batch together with the tracking position of the last request
it consumed, in one transaction (``ProcessRecorder.insert_events(..., tracking=...)``). A second
engine would collide on the stream's version, so the store fences the single writer.

The same code runs on POPO (in memory, unit tests), SQLite (one file per log, the embedded
default) and PostgreSQL (tables prefixed with the log's name); see ``spotex.config``.

The engine's hot path does not go through the library's ``Mapper`` (its JSON object hook and
event objects cost more than deciding an order): ``encode_outcome`` writes the very bytes the
Mapper would decode into the same ``Outcome`` (the facts are JSON-encoded once, canonically, and
those bytes serve both the hash and the stored state), and ``read_requests``/``decode_outcome``
decode without the object hook when the only transcoded value is the timestamp, falling back to
the Mapper otherwise. Tests check both directions against the Mapper. On PostgreSQL the exchange
log's recorder is the library's ``PostgresProcessRecorder`` with its rows sent in binary (the
text encoding of the composite rows cost more than the database's insert).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatetimeAsISO,
    InfrastructureFactory,
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    UUIDAsHex,
)
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import Environment, register_topic
from psycopg.sql import SQL, Identifier

from engine.exchange import RequestRecord, canonical
from engine.jsondecode import loads

EXCHANGE_STREAM_ID = UUID("00000000-0000-4000-8000-00000000e0e0")
PROCESS_RECORDER_TOPIC = "engine.log:BinaryPostgresProcessRecorder"
SNAPSHOT_STREAM_ID = UUID("00000000-0000-4000-8000-00000000ea5e")
GENESIS_HASH = "0" * 64
REQUESTS = "requests"


class Request(DomainEvent):
    """A command as the api received it; the engine alone decides what it does."""

    TOPIC = "spotex:Request"
    actor: str | None
    command: dict[str, Any]


class Outcome(DomainEvent):
    """What the engine decided for one request: its facts, hash-chained to the previous outcome."""

    TOPIC = "spotex:Outcome"
    request_id: str
    request_position: int
    actor: str | None
    command: str | None
    facts: list[dict[str, Any]]
    prev_hash: str
    hash: str


register_topic(Request.TOPIC, Request)
register_topic(Outcome.TOPIC, Outcome)

# ``canonical`` (engine.exchange) without building an encoder per call: the same output (a cycle,
# which the circular check would report, still fails: with a RecursionError).
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
).encode
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_string = json.encoder.encode_basestring  # what that encoder does with a str, without the dispatch


def _str(value: Any) -> str:
    return _string(value) if type(value) is str else _json(value)
_TYPE_KEY = b'"_type_"'


class BinaryPostgresProcessRecorder(PostgresProcessRecorder):
    """The library's process recorder, sending the rows of ``insert_events`` in binary.

    Only the placeholder differs from the library's statement (``%b`` instead of ``%s``), so
    psycopg uses the composite type's binary dumper: the table lock, NOTIFY, tracking row,
    pipeline and returned notification ids are the library's own. Selected through the
    library's ``PROCESS_RECORDER_TOPIC``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t (originator_id, originator_version, topic, state)"
            " SELECT originator_id, originator_version, topic, state"
            " FROM unnest(%b::{schema}.{stored_event_type}[]) RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            stored_event_type=Identifier(self.stored_event_type_name),
        )


def timestamp_only(state: bytes) -> dict[str, Any] | None:
    """The stored state as the Mapper would decode it, when the timestamp is its only
    transcoded value (the one ``"_type_"`` in the bytes); None: let the Mapper decode it.
    ``Logs`` decodes with it, and ``projections.pages`` the rows it reads itself."""
    if state.count(_TYPE_KEY) != 1:
        return None
    data = loads(state)
    if not isinstance(data, dict):
        return None
    ts = data.get("timestamp")
    if not isinstance(ts, dict) or len(ts) != 2 or ts.get("_type_") != "datetime_iso":
        return None
    data["timestamp"] = datetime.fromisoformat(ts["_data_"])
    return data


def outcome_hash(
    prev_hash: str,
    seq: int,
    request_id: str,
    request_position: int,
    time: str,
    actor: str | None,
    command: str | None,
    facts: list[dict[str, Any]],
) -> str:
    """The chain link: sha256 over the previous hash and this outcome's canonical content."""
    body = canonical([seq, request_id, request_position, time, actor, command, facts])
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def encode_outcome(
    seq: int, prev_hash: str, request: RequestRecord, command: str | None, facts: list[dict[str, Any]]
) -> tuple[StoredEvent, str]:
    """The stored outcome for a decided request and its chain hash, encoding the facts once.

    The hash is ``outcome_hash`` (a JSON list is its items' encodings joined by commas, so the
    canonical body can be assembled from them); the state is what ``Mapper.to_stored_event``
    makes of the ``Outcome``, except that the facts' keys are sorted.
    """
    facts_json = _canonical(facts)
    rid, time, actor, name = _str(request.request_id), _str(request.time), _str(request.actor), _str(command)
    position = int(request.position)
    body = f"[{int(seq)},{rid},{position},{time},{actor},{name},{facts_json}]"
    new_hash = hashlib.sha256(prev_hash.encode() + body.encode()).hexdigest()
    state = (
        f'{{"timestamp":{{"_type_":"datetime_iso","_data_":{time}}},"request_id":{rid},'
        f'"request_position":{position},"actor":{actor},"command":{name},"facts":{facts_json},'
        f'"prev_hash":{_json(prev_hash)},"hash":"{new_hash}"}}'
    )
    return StoredEvent(EXCHANGE_STREAM_ID, seq, Outcome.TOPIC, state.encode()), new_hash


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    position: int
    seq: int
    time: str
    request_id: str
    request_position: int
    actor: str | None
    command: str | None
    facts: list[dict[str, Any]]
    prev_hash: str
    hash: str


def recorded_outcome(position: int, seq: int, data: dict[str, Any]) -> RecordedOutcome:
    """The outcome at ``position`` from its stored state as ``timestamp_only`` decodes it (the
    fast path of ``Logs.decode_outcome``, and of ``projections.pages`` for the rows it reads)."""
    return RecordedOutcome(
        position,
        seq,
        data["timestamp"].isoformat(),
        data["request_id"],
        data["request_position"],
        data["actor"],
        data["command"],
        data["facts"],
        data["prev_hash"],
        data["hash"],
    )


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    exchange_position: int
    request_position: int
    last_hash: str
    state: dict[str, Any] | bytes  # bytes: the state already in canonical JSON


class RequestConflict(Exception):
    """The request id is taken by a different request (idempotency key reused)."""

    def __init__(self, request_id: UUID, position: int, existing: dict[str, Any]) -> None:
        super().__init__(f"request {request_id} exists with a different body")
        self.request_id = request_id
        self.position = position
        self.existing = existing


@dataclass(frozen=True, slots=True)
class Appended:
    request_id: UUID
    position: int
    created: bool  # False: an identical request was appended before (idempotent retry)


class Logs:
    """The requests log, the exchange log and the snapshot store of one deployment."""

    def __init__(
        self,
        requests: ApplicationRecorder,
        exchange: ProcessRecorder,
        snapshots: AggregateRecorder,
    ) -> None:
        self.requests = requests
        self.exchange = exchange
        self.snapshots = snapshots
        transcoder = JSONTranscoder()
        transcoder.register(UUIDAsHex())
        transcoder.register(DatetimeAsISO())
        self.mapper: Mapper[UUID] = Mapper(transcoder=transcoder)

    @classmethod
    def open(cls, envs: dict[str, dict[str, str]]) -> Logs:
        """Build the recorders from one eventsourcing environment per log name."""
        req_factory = InfrastructureFactory.construct(Environment(REQUESTS, envs[REQUESTS]))
        exchange_env = dict(envs["exchange"])
        if exchange_env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres":
            exchange_env.setdefault("PROCESS_RECORDER_TOPIC", PROCESS_RECORDER_TOPIC)
        ex_factory = InfrastructureFactory.construct(Environment("exchange", exchange_env))
        return cls(
            req_factory.application_recorder(),
            ex_factory.process_recorder(),
            ex_factory.aggregate_recorder("snapshots"),
        )

    # -- requests ---------------------------------------------------------------------------

    def append_request(
        self, request_id: UUID, actor: str | None, command: dict[str, Any], time: datetime
    ) -> Appended:
        """Append one request; an identical retry returns the original, a different body raises."""
        try:
            ids = self.requests.insert_events([self._stored_request(request_id, actor, command, time)])
        except IntegrityError:
            existing = self.request(request_id)
            if existing is None:
                raise
            position, original = existing
            if original.actor != actor or original.command != command:
                raise RequestConflict(request_id, position, original.command) from None
            return Appended(request_id, position, False)
        assert ids, "the recorder must return the notification id"
        return Appended(request_id, ids[0], True)

    def append_requests(
        self, items: Sequence[tuple[UUID, str | None, dict[str, Any], datetime]]
    ) -> list[Appended | RequestConflict]:
        """Append several requests in one transaction (group commit); one result per item.

        The same rules as ``append_request`` item by item, in order: a second item with an id
        already in the batch is an idempotent retry of the first (or a conflict), and when any
        id is already in the log (a retry of an earlier request, or another api process racing
        for the same key), the batch falls back to appending the items one at a time, so each
        gets exactly the answer it would get alone.
        """
        if not items:
            return []
        first: dict[UUID, int] = {}
        fresh: list[int] = []
        for i, (request_id, _, _, _) in enumerate(items):
            if request_id not in first:
                first[request_id] = i
                fresh.append(i)
        events = [self._stored_request(*items[i]) for i in fresh]
        try:
            ids = self.requests.insert_events(events)
        except IntegrityError:
            return [self._append_or_conflict(*item) for item in items]
        assert ids is not None and len(ids) == len(events), "the recorder must return the notification ids"
        results: list[Appended | RequestConflict] = [Appended(items[0][0], 0, True)] * len(items)
        for i, position in zip(fresh, ids, strict=True):
            results[i] = Appended(items[i][0], position, True)
        for i, (request_id, actor, command, _) in enumerate(items):
            j = first[request_id]
            if j != i:
                original = results[j]
                assert isinstance(original, Appended)
                if items[j][1] != actor or items[j][2] != command:
                    results[i] = RequestConflict(request_id, original.position, items[j][2])
                else:
                    results[i] = Appended(request_id, original.position, False)
        return results

    def _stored_request(
        self, request_id: UUID, actor: str | None, command: dict[str, Any], time: datetime
    ) -> StoredEvent:
        event = Request(  # type: ignore[call-arg]  # the library's dataclass metaclass: mypy sees no fields
            originator_id=request_id,
            originator_version=1,
            timestamp=time,
            actor=actor,
            command=command,
        )
        return self.mapper.to_stored_event(event)

    def _append_or_conflict(
        self, request_id: UUID, actor: str | None, command: dict[str, Any], time: datetime
    ) -> Appended | RequestConflict:
        try:
            return self.append_request(request_id, actor, command, time)
        except RequestConflict as exc:
            return exc

    def request(self, request_id: UUID) -> tuple[int, Request] | None:
        """The request with this id and its position, or None."""
        stored = self.requests.select_events(request_id, limit=1)
        if not stored:
            return None
        position = self._position_of(request_id)
        return position, self._decode_request(stored[0])

    def _position_of(self, request_id: UUID) -> int:
        recorder: Any = self.requests
        if hasattr(recorder, "datastore") and hasattr(recorder.datastore, "schema"):  # PostgreSQL
            from psycopg.sql import SQL, Identifier

            query = SQL("SELECT notification_id FROM {}.{} WHERE originator_id = %s").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name)
            )
            with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(query, (request_id,))
                row = curs.fetchone()
                return int(row["notification_id"])
        if hasattr(recorder, "datastore"):  # SQLite: the notification id is the rowid
            with recorder.datastore.transaction(commit=False) as c:
                c.execute(
                    f"SELECT rowid FROM {recorder.events_table_name} WHERE originator_id = ?",
                    (request_id.hex,),
                )
                return int(c.fetchone()[0])
        for i, stored in enumerate(recorder._stored_events):  # POPO
            if stored.originator_id == request_id:
                return i + 1
        raise KeyError(request_id)

    def _decode_request(self, stored: StoredEvent) -> Request:
        event = self.mapper.to_domain_event(stored)
        assert isinstance(event, Request)
        return event

    def decode_request(self, n: Notification) -> RequestRecord:
        """One request as the engine reads it; the same as through the Mapper, only faster."""
        data = timestamp_only(n.state) if n.topic == Request.TOPIC else None
        if data is None:
            event = self._decode_request(n)
            return RequestRecord(
                str(event.originator_id), n.id, event.timestamp.isoformat(), event.actor, event.command
            )
        return RequestRecord(
            str(n.originator_id), n.id, data["timestamp"].isoformat(), data["actor"], data["command"]
        )

    def read_requests(self, after: int, limit: int) -> list[RequestRecord]:
        """Requests after a position, in log order (positions may have gaps on PostgreSQL)."""
        decode = self.decode_request
        return [
            decode(n)
            for n in self.requests.select_notifications(start=after, limit=limit, inclusive_of_start=False)
        ]

    def last_request_position(self) -> int:
        return self.requests.max_notification_id() or 0

    # -- the exchange log -------------------------------------------------------------------

    def commit(self, outcomes: Sequence[StoredEvent | Outcome], request_position: int) -> Sequence[int]:
        """Append a batch of outcomes (``encode_outcome``'s, or ``Outcome`` events) and the
        tracking position in one transaction; returns the outcomes' positions."""
        stored = [o if isinstance(o, StoredEvent) else self.mapper.to_stored_event(o) for o in outcomes]
        ids = self.exchange.insert_events(stored, tracking=Tracking(REQUESTS, request_position))
        assert ids is not None
        return ids

    def engine_position(self) -> int:
        """The position of the last request whose outcome is committed."""
        return self.exchange.max_tracking_id(REQUESTS) or 0

    def last_outcome_position(self) -> int:
        return self.exchange.max_notification_id() or 0

    def decode_outcome(self, n: Notification) -> RecordedOutcome:
        data = timestamp_only(n.state) if n.topic == Outcome.TOPIC else None
        if data is not None:
            return recorded_outcome(n.id, n.originator_version, data)
        o = self.mapper.to_domain_event(n)
        assert isinstance(o, Outcome)
        return RecordedOutcome(
            n.id,
            o.originator_version,
            o.timestamp.isoformat(),
            o.request_id,
            o.request_position,
            o.actor,
            o.command,
            o.facts,
            o.prev_hash,
            o.hash,
        )

    def read_outcomes(
        self, after: int, limit: int, until: int | None = None
    ) -> list[RecordedOutcome]:
        return [
            self.decode_outcome(n)
            for n in self.exchange.select_notifications(
                start=after, limit=limit, stop=until, inclusive_of_start=False
            )
        ]

    def iter_outcomes(
        self, after: int = 0, until: int | None = None, page: int = 1000
    ) -> Iterator[RecordedOutcome]:
        while True:
            batch = self.read_outcomes(after, page, until)
            if not batch:
                return
            yield from batch
            after = batch[-1].position

    def iter_requests(self, after: int = 0, until: int | None = None, page: int = 1000
                      ) -> Iterator[RequestRecord]:
        while True:
            batch = self.read_requests(after, page)
            for r in batch:
                if until is not None and r.position > until:
                    return
                yield r
            if len(batch) < page:
                return
            after = batch[-1].position

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot (checksummed, compressed); one at the same sequence is kept."""
        state = snapshot.state if isinstance(snapshot.state, bytes) else _canonical(snapshot.state).encode()
        # canonical() of the whole record, assembled around the state's canonical bytes.
        body = (
            b'{"exchange_position":%d,"last_hash":%s,"request_position":%d,"seq":%d,"state":'
            % (
                snapshot.exchange_position,
                _json(snapshot.last_hash).encode(),
                snapshot.request_position,
                snapshot.seq,
            )
            + state
            + b"}"
        )
        checksum = hashlib.sha256(body).hexdigest().encode()
        stored = StoredEvent(
            originator_id=SNAPSHOT_STREAM_ID,
            originator_version=snapshot.seq,
            topic="spotex:EngineSnapshot",
            state=checksum + b"\n" + zlib.compress(body, 1),
        )
        # A snapshot at this sequence may exist already: identical, by determinism.
        with contextlib.suppress(IntegrityError):
            self.snapshots.insert_events([stored])

    def latest_snapshots(self, limit: int = 3) -> Iterator[Snapshot]:
        """Valid snapshots, newest first; a corrupt one (checksum mismatch) is skipped."""
        for stored in self.snapshots.select_events(SNAPSHOT_STREAM_ID, desc=True, limit=limit):
            checksum, _, packed = stored.state.partition(b"\n")
            try:
                body = zlib.decompress(packed)
            except zlib.error:
                continue
            if hashlib.sha256(body).hexdigest().encode() != checksum:
                continue
            data = json.loads(body)
            yield Snapshot(
                data["seq"],
                data["exchange_position"],
                data["request_position"],
                data["last_hash"],
                data["state"],
            )
