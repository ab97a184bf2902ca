"""Stored events → the records the audit reads, for the auditor (pure: bytes in, records out).

A stored event (an ``eventsourcing`` notification: position, stream, version, topic, state
bytes) becomes a ``RequestRecord`` or a ``StoredOutcome``, or an ``Unreadable`` saying why not:
an event that does not decode is reported by the audit, never skipped. The JSON is decoded
directly (the library's generic transcoder, with its object hook, costs several times more);
the only transcoded value in these events is the timestamp, taken as the ISO string stored.

An outcome laid out exactly as ``engine.log.encode_outcome`` writes it (checked against its
decoded fields) also carries the stored bytes of its facts, which the chain check hashes
directly (see ``engine.audit.StoredOutcome``).

The parser is orjson (compiled, about three times the standard library's speed on these
documents), but only where it gives exactly what ``json`` gives: it turns an integer beyond
64 bits into a float where ``json`` keeps the integer, so a state holding a run of 19 or more
digits anywhere (an amount that large, or by chance inside a hash) is parsed by ``json``
instead, and so is anything orjson refuses (``json`` accepts a little more: NaN, lone
surrogates), so what decodes and to what is exactly as before. Only decoding changes: the chain
is still checked over the stored bytes, never over re-encoded ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final
from uuid import UUID

from engine.audit import StoredOutcome, Undecided, Unreadable, scalar_json
from engine.exchange import RequestRecord
from engine.jsondecode import loads
from engine.log import EXCHANGE_STREAM_ID

# A stored event read as a plain tuple (``spotex.audit_cli`` on PostgreSQL): position, stream id
# (text), version, topic, state; making a named tuple of each row cost more than its decoding.
StoredRow = tuple[Any, Any, Any, Any, Any]


class Stored:
    """A ``StoredRow`` with the attributes of a notification, for the full decoders (the rare
    outcome whose head is not the canonical layout, or whose facts re-execution does not give)."""

    __slots__ = ("id", "originator_id", "originator_version", "state", "topic")

    def __init__(self, row: StoredRow) -> None:
        self.id, self.originator_id, self.originator_version, self.topic, self.state = row


def _time(value: Any) -> str:
    if not isinstance(value, dict) or value.get("_type_") != "datetime_iso":
        raise ValueError(f"timestamp {value!r} is not a stored datetime")
    return str(value["_data_"])


_decode = loads  # ``json.loads`` of the stored bytes, by orjson where that is provably the same


_EXCHANGE_TEXT = str(EXCHANGE_STREAM_ID)
# A stream id read as text in the form str(UUID) gives (PostgreSQL's uuid::text): kept as it is.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def decode_outcome(n: Any, slice_facts: bool = True) -> StoredOutcome | Unreadable:
    """``slice_facts``: also find the stored bytes of the facts (only the chain check uses them)."""
    try:
        stream = n.originator_id
        if n.topic != "spotex:Outcome" or (stream != _EXCHANGE_TEXT and _uuid(stream) != EXCHANGE_STREAM_ID):
            raise ValueError(f"topic {n.topic!r} in stream {n.originator_id} is not an outcome")
        d = _decode(n.state)
        time, rid, position, actor, command = (
            _time(d["timestamp"]),
            d["request_id"],
            d["request_position"],
            d["actor"],
            d["command"],
        )
        facts, prev_hash, digest = d["facts"], d["prev_hash"], d["hash"]
        if type(facts) is not list or not all(type(f) is dict for f in facts):
            raise ValueError("facts must be a list of objects")
        return StoredOutcome(
            n.id,
            n.originator_version,
            time,
            rid,
            position,
            actor,
            command,
            facts,
            prev_hash,
            digest,
            _facts_slice(n.state.decode(), time, rid, position, actor, command, prev_hash, digest)
            if slice_facts
            else None,
        )
    except Exception as exc:
        return Unreadable("exchange", n.id, None, f"the stored outcome does not decode: {exc!r}")


def _facts_slice(state: str, *fields: Any) -> str | None:
    """The stored facts' bytes, if the state is laid out exactly as ``encode_outcome`` writes it."""
    time, rid, position, actor, command, prev_hash, digest = map(scalar_json, fields)
    prefix = (
        f'{{"timestamp":{{"_type_":"datetime_iso","_data_":{time}}},"request_id":{rid},'
        f'"request_position":{position},"actor":{actor},"command":{command},"facts":'
    )
    suffix = f',"prev_hash":{prev_hash},"hash":{digest}}}'
    if len(state) > len(prefix) + len(suffix) and state.startswith(prefix) and state.endswith(suffix):
        return state[len(prefix) : len(state) - len(suffix)]
    return None


# The stored outcome as ``engine.log.encode_outcome`` writes it, every string in the head free of
# the characters JSON escapes (quote, backslash, control characters): such a string's JSON is
# the same in every encoder, the canonical one included, so the head's bytes are what the engine
# hashed. The two hashes are 64 hex digits, so the tail has a fixed length.
_STR = rb'"([^"\\\x00-\x1f]*)"'
_HEAD = re.compile(
    rb'\{"timestamp":\{"_type_":"datetime_iso","_data_":' + _STR + rb'\},"request_id":' + _STR
    + rb',"request_position":(0|[1-9][0-9]{0,17}),"actor":(?:null|' + _STR + rb'),"command":(?:null|'
    + _STR + rb'),"facts":\['
).match
# The tail, ``],"prev_hash":"<64 hex>","hash":"<64 hex>"}``, has a fixed length. Mapped byte for
# byte with every hex digit made "0" (the rest left as it is), it must be ``_TAIL_SHAPE``: the
# hashes are hex digits and everything else but the keys' own hex letters is in place; the two
# keys are then compared as they are. A regular expression over the tail took ~6,800
# instructions an outcome, this ~2,800 (compiled).
_PREV_HASH_KEY: Final = b'],"prev_hash":"'
_HASH_KEY: Final = b'","hash":"'
_PREV_AT: Final = len(_PREV_HASH_KEY)
_HASH_KEY_AT: Final = _PREV_AT + 64
_HASH_AT: Final = _HASH_KEY_AT + len(_HASH_KEY)
_END_AT: Final = _HASH_AT + 64
_HEX_TO_ZERO: Final = bytes(0x30 if b in b"0123456789abcdef" else b for b in range(256))
_TAIL_SHAPE: Final = (_PREV_HASH_KEY + b"0" * 64 + _HASH_KEY + b"0" * 64 + b'"}').translate(_HEX_TO_ZERO)
_TAIL_LENGTH: Final = len(_TAIL_SHAPE)


def _tail_hashes(tail: bytes) -> tuple[str, str] | None:
    """The two hashes of an outcome's tail (its last ``_TAIL_LENGTH`` bytes), or None if it is
    not laid out as ``engine.log.encode_outcome`` writes it."""
    if (
        tail.translate(_HEX_TO_ZERO) != _TAIL_SHAPE
        or tail[:_PREV_AT] != _PREV_HASH_KEY
        or tail[_HASH_KEY_AT:_HASH_AT] != _HASH_KEY
    ):
        return None
    return tail[_PREV_AT:_HASH_KEY_AT].decode("ascii"), tail[_HASH_AT:_END_AT].decode("ascii")


def decode_outcome_head(n: Any) -> Undecided | StoredOutcome | Unreadable:
    """The head of a stored outcome, its facts left as the stored bytes (see
    ``engine.audit.Undecided``); any other layout is decoded in full by ``decode_outcome``."""
    return _outcome_head(n.id, n.originator_id, n.originator_version, n.topic, n.state, n, decode_outcome)


def decode_outcome_head_row(row: StoredRow) -> Undecided | StoredOutcome | Unreadable:
    """``decode_outcome_head`` of a row read as a plain tuple (see ``StoredRow``)."""
    position, stream, version, topic, state = row
    return _outcome_head(position, stream, version, topic, state, row, decode_outcome_row)


def decode_outcome_row(row: StoredRow) -> StoredOutcome | Unreadable:
    """``decode_outcome`` of a row read as a plain tuple."""
    return decode_outcome(Stored(row))


def _outcome_head(
    position: Any,
    stream: Any,
    version: Any,
    topic: Any,
    state: Any,
    stored: Any,
    decoder: Callable[[Any], StoredOutcome | Unreadable],
) -> Undecided | StoredOutcome | Unreadable:
    head = _HEAD(state) if type(state) is bytes else None
    if head is None or topic != "spotex:Outcome":
        return decoder(stored)
    raw: bytes = state  # bytes: the pattern matched it (typed, it is sliced natively)
    at = len(raw) - _TAIL_LENGTH  # the facts' closing bracket
    end = head.end()
    if at < end or stream not in (_EXCHANGE_TEXT, EXCHANGE_STREAM_ID):
        return decoder(stored)
    hashes = _tail_hashes(raw[at:])
    if hashes is None:
        return decoder(stored)
    prev_hash, digest = hashes
    # The groups typed as bytes, so that compiled, each is decoded by a direct call (no method
    # looked up by name on an untyped value, as with the tuple of ``groups()``).
    time: bytes = head[1]
    rid: bytes = head[2]
    actor: bytes | None = head[4]
    command: bytes | None = head[5]
    try:
        return Undecided(
            position,
            version,
            time.decode(),
            rid.decode(),
            int(head[3]),
            None if actor is None else actor.decode(),
            None if command is None else command.decode(),
            prev_hash,
            digest,
            raw[end - 1 : at + 1],
            decoder,
            stored,
        )
    except UnicodeDecodeError:
        return decoder(stored)


def decode_snapshot(body: bytes) -> Any:
    """A stored snapshot's JSON body (checksum already verified)."""
    return _decode(body)


def decode_request(n: Any) -> RequestRecord | Unreadable:
    return _request(n.id, n.originator_id, n.originator_version, n.topic, n.state)


def decode_request_row(row: StoredRow) -> RequestRecord | Unreadable:
    """``decode_request`` of a row read as a plain tuple (see ``StoredRow``). Its stream id is
    PostgreSQL's ``uuid::text`` of a ``uuid`` column, which is always the canonical form
    (lower-case hex, 8-4-4-4-12), so it is taken as it is: checking it again with the regular
    expression cost ~3,500 instructions a request, ~1.6 % of an audited outcome."""
    position, stream, version, topic, state = row
    return _request(position, stream, version, topic, state, type(stream) is str)


def _request(
    position: Any, stream: Any, version: Any, topic: Any, state: Any, canonical: bool = False
) -> RequestRecord | Unreadable:
    """``canonical``: ``stream`` is a str known to be in the form ``str(UUID)`` gives."""
    try:
        if topic != "spotex:Request" or version != 1:
            raise ValueError(f"topic {topic!r} version {version} is not a request")
        d = _decode(state)
        if type(d["command"]) is not dict:
            raise ValueError("command must be an object")
        if canonical:
            rid = stream
        else:
            rid = stream if type(stream) is str and _CANONICAL_UUID(stream) else str(_uuid(stream))
        return RequestRecord(rid, position, _time(d["timestamp"]), d["actor"], d["command"])
    except Exception as exc:
        error = f"the stored request does not decode: {exc!r}"
        return Unreadable("requests", position, str(stream), error)
