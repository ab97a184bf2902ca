"""The audit over recorded outcomes in memory: an honest record is clean; each kind of tampering
(changed, removed or swapped outcome; changed or removed request; a forger who re-hashes the
chain; a truncated tail; a wrong snapshot) is reported, and the first violation names the first
position it touches."""

from __future__ import annotations

import copy
import uuid
from dataclasses import replace
from typing import Any

import pytest

from domain.commands import COMMANDS, request_id_for, user_id_for
from engine.audit import Audit, AuditViolation, StoredOutcome, Undecided, Unreadable
from engine.audit_decode import decode_outcome, decode_outcome_head
from engine.exchange import Exchange, RequestRecord, canonical
from engine.log import EXCHANGE_STREAM_ID, GENESIS_HASH, RecordedOutcome, encode_outcome, outcome_hash

ALICE, BOB = user_id_for("alice"), user_id_for("bob")


def request(position: int, actor: str | None, name: str, **fields: Any) -> RequestRecord:
    command = COMMANDS[name](**fields)
    rid = request_id_for(command, actor) or uuid.UUID(int=position, version=4)
    time = f"2024-01-01T00:{position // 60:02d}:{position % 60:02d}+00:00"
    return RequestRecord(str(rid), position, time, actor, command.to_log())


def with_command(r: RequestRecord, command: dict[str, Any]) -> RequestRecord:
    """The same request with another command (a tampered requests log)."""
    return RequestRecord(r.request_id, r.position, r.time, r.actor, command)


def flow() -> list[RequestRecord]:
    """Users, a market, deposits, resting orders, a taker that sweeps two levels, a cancel, an
    amend, a withdrawal and a transfer: every kind of fact the engine makes."""
    commands: list[tuple[str | None, str, dict[str, Any]]] = [
        (None, "RegisterUser", {"username": "admin", "password_hash": "x", "roles": ["admin"]}),
        (None, "RegisterUser", {"username": "alice", "password_hash": "x"}),
        (None, "RegisterUser", {"username": "bob", "password_hash": "x"}),
        (None, "ListAsset", {"symbol": "BTC", "precision": 8}),
        (None, "ListAsset", {"symbol": "USDT", "precision": 6}),
        (
            None,
            "ListMarket",
            {
                "symbol": "BTC-USDT",
                "base": "BTC",
                "quote": "USDT",
                "tick_size": "0.01",
                "lot_size": "0.0001",
                "maker_fee": "0.001",
                "taker_fee": "0.002",
            },
        ),
        (None, "Deposit", {"username": "alice", "asset": "USDT", "amount": "100000", "reference": "a1"}),
        (None, "Deposit", {"username": "bob", "asset": "BTC", "amount": "3", "reference": "b1"}),
        (
            BOB,
            "PlaceOrder",
            {
                "market": "BTC-USDT",
                "side": "sell",
                "type": "limit",
                "price": "30000",
                "quantity": "0.5",
                "client_order_id": "s1",
            },
        ),
        (
            BOB,
            "PlaceOrder",
            {
                "market": "BTC-USDT",
                "side": "sell",
                "type": "limit",
                "price": "30010",
                "quantity": "0.5",
                "client_order_id": "s2",
            },
        ),
        (
            BOB,
            "PlaceOrder",
            {"market": "BTC-USDT", "side": "sell", "type": "limit", "price": "30010", "quantity": "0.25"},
        ),
        (
            ALICE,
            "PlaceOrder",
            {
                "market": "BTC-USDT",
                "side": "buy",
                "type": "limit",
                "price": "30010",
                "quantity": "0.8",
                "client_order_id": "b1",
            },
        ),
        (
            ALICE,
            "PlaceOrder",
            {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "29000", "quantity": "1"},
        ),
        (BOB, "PlaceOrder", {"market": "BTC-USDT", "side": "sell", "type": "market", "quantity": "0.1"}),
        (ALICE, "RequestWithdrawal", {"asset": "USDT", "amount": "100", "reference": "w1"}),
        (ALICE, "Transfer", {"to_username": "bob", "asset": "USDT", "amount": "5", "reference": "t1"}),
        (
            BOB,
            "PlaceOrder",
            {"market": "BTC-USDT", "side": "sell", "type": "limit", "price": "30100", "quantity": "1"},
        ),
    ]
    return [request(i + 1, actor, name, **fields) for i, (actor, name, fields) in enumerate(commands)]


def record(requests: list[RequestRecord], first_position: int = 1) -> list[RecordedOutcome]:
    """What the sequencer would store: one chained outcome per request."""
    ex, out, prev = Exchange(), [], GENESIS_HASH
    for seq, r in enumerate(requests, 1):
        facts = ex.execute(r)
        name = r.command["command"]
        digest = outcome_hash(prev, seq, r.request_id, r.position, r.time, r.actor, name, facts)
        out.append(
            RecordedOutcome(
                first_position + seq - 1,
                seq,
                r.time,
                r.request_id,
                r.position,
                r.actor,
                name,
                copy.deepcopy(facts),
                prev,
                digest,
            )
        )
        prev = digest
    return out


def rechain(outcomes: list[RecordedOutcome]) -> list[RecordedOutcome]:
    """A forger who recomputes every hash after changing something."""
    out, prev = [], GENESIS_HASH
    for o in outcomes:
        digest = outcome_hash(
            prev, o.seq, o.request_id, o.request_position, o.time, o.actor, o.command, o.facts
        )
        out.append(replace(o, prev_hash=prev, hash=digest))
        prev = digest
    return out


def audit(requests: list[Any], outcomes: list[Any], **kw: Any) -> list[AuditViolation]:
    return list(Audit(**kw).run(requests, outcomes))


def codes(found: list[AuditViolation]) -> set[str]:
    return {v.code for v in found}


def trade_index(outcomes: list[RecordedOutcome]) -> int:
    return next(i for i, o in enumerate(outcomes) if any(f["type"] == "TradeExecuted" for f in o.facts))


def test_an_honest_record_is_clean_and_reported() -> None:
    requests = flow()
    outcomes = record(requests)
    run = Audit()
    assert list(run.run(requests, outcomes)) == []
    report = run.report()
    assert report["outcomes"] == report["requests"] == len(requests)
    assert report["facts"]["TradeExecuted"] == 3
    assert report["head_hash"] == outcomes[-1].hash
    assert all(row["sum"] == 0 for row in report["assets"].values())
    usdt = report["assets"]["USDT"]
    assert usdt["custody"] == -100_000_000_000  # the withdrawal is still pending: held, not paid out
    assert usdt["users_frozen"] == 100_000_000 + 29_000 * 1_000_000 - 2_900 * 1_000_000  # it + the bid's rest


def test_a_changed_fact_breaks_the_hash_and_reexecution_at_its_position() -> None:
    requests, outcomes = flow(), record(flow())
    i = trade_index(outcomes)
    trade = next(f for f in outcomes[i].facts if f["type"] == "TradeExecuted")
    trade["quote_amount"] += 1
    found = audit(requests, outcomes)
    first = found[0]
    assert (first.log, first.position, first.code) == ("exchange", outcomes[i].position, "hash_mismatch")
    assert {"reexecution_mismatch", "trade_amounts"} <= codes(found)
    assert all(v.position == outcomes[i].position for v in found if v.log == "exchange")


def test_a_forger_who_rehashes_the_chain_is_caught_by_reexecution_and_the_ledger() -> None:
    requests, outcomes = flow(), record(flow())
    i = trade_index(outcomes)
    trade = next(f for f in outcomes[i].facts if f["type"] == "TradeExecuted")
    trade["maker_fee"] = 0
    for row in trade["postings"]:
        if row[0] == "@fees" and row[1] == trade["maker_fee_asset"]:
            row[2] = 0
        elif row[0] == trade["maker_user_id"] and row[1] == trade["maker_fee_asset"]:
            row[2] = trade["quote_amount"]
    found = audit(requests, rechain(outcomes))
    assert found[0].position == outcomes[i].position
    assert "hash_mismatch" not in codes(found) and "chain_break" not in codes(found)
    assert {"reexecution_mismatch", "fee_mismatch"} <= codes(found)


def test_a_removed_outcome_breaks_the_chain_at_the_next_position() -> None:
    requests, outcomes = flow(), record(flow())
    del outcomes[9]
    found = audit(requests, outcomes)
    assert (found[0].position, found[0].code) == (outcomes[9].position, "seq_gap")
    assert "chain_break" in codes(found)
    missing = [v for v in found if v.code == "request_without_outcome"]
    assert [(v.log, v.position) for v in missing] == [("requests", requests[9].position)]
    assert "reexecution_mismatch" not in codes(found)  # the request was still executed


def test_swapped_outcomes_are_reported_at_the_first_of_the_two() -> None:
    requests, outcomes = flow(), record(flow())
    a, b = outcomes[10], outcomes[11]
    outcomes[10] = replace(b, position=a.position)
    outcomes[11] = replace(a, position=b.position)
    found = audit(requests, outcomes)
    assert found[0].position == a.position
    assert {"seq_order", "seq_gap", "chain_break", "request_order", "outcome_order"} <= codes(found)


def test_a_removed_request_is_named_by_its_position() -> None:
    requests, outcomes = flow(), record(flow())
    gone = requests.pop(12)
    found = audit(requests, outcomes)
    assert (found[0].log, found[0].position, found[0].code) == ("requests", gone.position, "missing_request")
    assert codes(found) == {"missing_request"}  # the recorded facts were applied: all else agrees


def test_a_changed_request_makes_reexecution_differ() -> None:
    requests, outcomes = flow(), record(flow())
    r = requests[11]
    requests[11] = with_command(r, {**r.command, "price": "30000"})
    found = audit(requests, outcomes)
    first = found[0]
    assert (first.log, first.position) == ("exchange", outcomes[11].position)
    assert first.code == "reexecution_mismatch"
    assert f"requests log position {r.position}" in first.message
    assert "hash_mismatch" not in codes(found)  # the exchange log itself is intact


def test_a_changed_idempotency_key_no_longer_derives_the_request_id() -> None:
    requests, outcomes = flow(), record(flow())
    r = requests[6]
    requests[6] = with_command(r, {**r.command, "reference": "a2"})
    found = audit(requests, outcomes)
    assert (found[0].log, found[0].position, found[0].code) == ("requests", r.position, "request_id_mismatch")


def test_a_changed_request_without_a_derived_id_is_caught_by_its_facts() -> None:
    requests, outcomes = flow(), record(flow())
    r = requests[12]
    assert r.command.get("client_order_id") is None
    requests[12] = with_command(r, {**r.command, "quantity": "2"})
    found = audit(requests, outcomes)
    assert (found[0].code, found[0].position) == ("reexecution_mismatch", outcomes[12].position)


def test_a_truncated_tail_is_caught_by_the_tracking_position() -> None:
    requests, outcomes = flow(), record(flow())
    found = audit(requests, outcomes[:-2], tracked_position=requests[-1].position)
    assert [(v.code, v.position) for v in found] == [
        ("request_without_outcome", requests[-2].position),
        ("request_without_outcome", requests[-1].position),
    ]
    assert audit(requests, outcomes[:-2], tracked_position=requests[-3].position) == []


def test_an_undecodable_outcome_is_reported_not_skipped() -> None:
    requests, outcomes = flow(), record(flow())
    outcomes[5] = Unreadable("exchange", outcomes[5].position, None, "bad JSON")  # type: ignore[call-overload]
    found = audit(requests, outcomes)
    assert (found[0].code, found[0].position, found[0].seq) == ("undecodable", 6, 6)


def test_a_snapshot_must_equal_the_reexecuted_state() -> None:
    requests, outcomes = flow(), record(flow())
    ex = Exchange()
    for r in requests[:12]:
        ex.execute(r)
    o = outcomes[11]
    snap = {
        "exchange_position": o.position,
        "request_position": o.request_position,
        "last_hash": o.hash,
        "state": ex.to_state(),
    }
    assert audit(requests, outcomes, snapshots={12: snap}) == []
    bad = copy.deepcopy(snap)
    bad["state"]["balances"][0][2] += 1
    found = audit(requests, outcomes, snapshots={12: bad})
    # re-execution's state differs from it, and so do the auditor's own folds
    assert [(v.log, v.position, v.code) for v in found] == [("snapshots", 12, "snapshot_mismatch")] * 2
    assert "re-executed state in state" in found[0].message and "folds in balances" in found[1].message
    found = audit([], outcomes, snapshots={12: bad}, parts=("ledger", "book"))
    assert [(v.position, v.code) for v in found] == [(12, "snapshot_mismatch")]


def snapshot_at(requests: list[RequestRecord], outcomes: list[RecordedOutcome], seq: int) -> dict[str, Any]:
    ex = Exchange()
    for r in requests[:seq]:
        ex.execute(r)
    o = outcomes[seq - 1]
    return {
        "seq": seq,
        "exchange_position": o.position,
        "request_position": o.request_position,
        "last_hash": o.hash,
        "state": ex.to_state(),
    }


def in_two_segments(
    requests: list[Any], outcomes: list[Any], seq: int, snap: dict[str, Any]
) -> tuple[list[AuditViolation], list[AuditViolation], dict[str, Any]]:
    """The audit cut at the snapshot of ``seq``: the first segment ends at it, the second starts
    from it with the first one's ids."""
    first = Audit(snapshots={seq: snap}, final=False)
    found_a = list(first.run(requests[:seq], outcomes[:seq]))
    second = Audit(start=snap, known_ids=first.new_ids())
    found_b = list(second.run(requests[seq:], outcomes[seq:]))
    return found_a, found_b, second.report()


@pytest.mark.parametrize("tamper", ["none", "fact", "request", "removed"])
def test_an_audit_started_at_a_proven_snapshot_finds_what_one_from_position_0_finds(tamper: str) -> None:
    requests, outcomes = flow(), record(flow())
    snap = snapshot_at(requests, outcomes, 12)
    i = trade_index(outcomes[12:]) + 12
    if tamper == "fact":
        trade = next(f for f in outcomes[i].facts if f["type"] == "TradeExecuted")
        trade["quote_amount"] += 1
    elif tamper == "request":
        requests[i] = with_command(requests[i], {**requests[i].command, "quantity": "0.2"})
    elif tamper == "removed":
        del outcomes[i]
    whole = Audit(snapshots={12: snap})
    expected = list(whole.run(requests, outcomes))
    found_a, found_b, report = in_two_segments(requests, outcomes, 12, snap)
    assert found_a == [] and found_b == expected
    assert (tamper == "none") == (expected == [])
    full = whole.report()
    for key in ("state_hash", "head_hash", "assets", "last_seq", "last_position"):
        assert report[key] == full[key], key


def test_an_id_applied_before_the_snapshot_is_a_duplicate_after_it() -> None:
    requests, outcomes = flow(), record(flow())
    snap = snapshot_at(requests, outcomes, 12)
    deposit = next(o for o in outcomes if o.facts[0]["type"] == "Deposited")
    again = replace(deposit, position=outcomes[-1].position + 1, seq=outcomes[-1].seq + 1)
    first = Audit(snapshots={12: snap}, parts=("ledger", "book"), final=False)
    assert list(first.run([], outcomes[:12])) == []
    assert deposit.facts[0]["deposit_id"] in first.new_ids()
    for known, want in ((first.new_ids(), True), (set(), False)):
        second = Audit(start=snap, known_ids=known, parts=("ledger", "book"))
        found = list(second.run([], [*outcomes[12:], again]))
        assert ("duplicate_id" in codes(found)) is want
        assert "duplicate_key" in codes(found)  # the reference is in the snapshot's keys


@pytest.mark.parametrize("parts", [("chain",), ("reexecute",), ("ledger", "book")])
def test_parts_split_the_work(parts: tuple[str, ...]) -> None:
    requests, outcomes = flow(), record(flow())
    del outcomes[9]
    found = audit(requests if "reexecute" in parts else [], outcomes, parts=parts)
    if parts == ("chain",):
        assert codes(found) == {"seq_gap", "chain_break"}
    elif parts == ("reexecute",):
        assert codes(found) == {"request_without_outcome"}
    else:  # the lost OrderAccepted leaves its later facts without an order or a hold
        assert {"unknown_order", "unknown_hold"} <= codes(found)
        assert not codes(found) & {"seq_gap", "chain_break", "request_without_outcome"}


def test_the_chain_is_checked_over_the_stored_facts_bytes_when_the_reader_gives_them() -> None:
    requests, outcomes = flow(), record(flow())
    stored = [
        StoredOutcome(*(getattr(o, f) for f in o.__slots__), canonical(o.facts).decode())  # type: ignore[attr-defined]
        for o in outcomes
    ]
    assert audit(requests, stored) == []
    i = trade_index(outcomes)
    o = stored[i]
    assert isinstance(o.facts_json, str)
    stored[i] = replace(o, facts_json=o.facts_json.replace('"quantity":', '"quantity":1', 1))
    found = audit(requests, stored)
    assert (found[0].code, found[0].position) == ("hash_mismatch", o.position)


LEDGER_CODES = {"frozen_mismatch", "negative_balance", "hold_overdrawn", "unknown_hold"}


def test_a_duplicated_outcome_is_reported_once_and_not_applied_again() -> None:
    requests, outcomes = flow(), record(flow())
    copy_of = outcomes[11]
    outcomes.insert(14, replace(copy_of, position=outcomes[13].position + 1))
    for k in range(15, len(outcomes)):
        outcomes[k] = replace(outcomes[k], position=outcomes[k].position + 1)
    found = audit(requests, outcomes)
    assert found[0].position == outcomes[14].position
    assert "outcome_order" in codes(found)
    # re-execution stays in step; the ledger fold, which folds the log as it stands, does not
    assert "reexecution_mismatch" not in codes(found)
    assert {v.position for v in found if v.code not in LEDGER_CODES} == {15, 16}


# -- outcomes read as the CLI reads them: the head decoded, the facts decided by re-execution ------


class _Row:
    """A stored event as the CLI's PostgreSQL reader gives it."""

    def __init__(self, id: int, version: int, state: bytes, topic: str = "spotex:Outcome") -> None:
        self.id, self.originator_version, self.topic, self.state = id, version, topic, state
        self.originator_id = str(EXCHANGE_STREAM_ID)


def stored_rows(requests: list[RequestRecord]) -> list[_Row]:
    """What the sequencer stores for each request (``engine.log.encode_outcome``)."""
    ex, rows, prev = Exchange(), [], GENESIS_HASH
    for seq, r in enumerate(requests, 1):
        stored, prev = encode_outcome(seq, prev, r, r.command["command"], ex.execute(r))
        rows.append(_Row(seq, seq, stored.state))
    return rows


def tampered_rows(requests: list[RequestRecord], how: str) -> list[_Row]:
    rows = stored_rows(requests)
    i = next(i for i, r in enumerate(rows) if b'"TradeExecuted"' in r.state)
    row = rows[i]
    if how == "fact changed":  # still valid JSON, the head and the tail intact
        row.state = row.state.replace(b'"quantity":', b'"quantity":1', 1)
    elif how == "facts undecodable":
        row.state = row.state.replace(b'"quantity":', b'"quantity":,', 1)
    elif how == "facts not objects":
        start = row.state.index(b'"facts":[') + len(b'"facts":')
        end = row.state.index(b'],"prev_hash":')
        row.state = row.state[:start] + b"[1,2" + row.state[end:]
    elif how == "head escaped":  # the same JSON value, but not the canonical bytes
        row.state = row.state.replace(b'"command":"PlaceOrder"', b'"command":"Place\\u004frder"', 1)
    elif how in ("hash escaped", "hash not hex"):  # the tail: the same value, or another one
        at = row.state.rindex(b'"hash":"') + len(b'"hash":"')
        first = row.state[at : at + 1]
        other = b"\\u%04x" % first[0] if how == "hash escaped" else b"g"
        row.state = row.state[:at] + other + row.state[at + 1 :]
    elif how == "outcome deleted":
        del rows[i]
    elif how == "outcomes swapped":
        rows[i].state, rows[i + 1].state = rows[i + 1].state, rows[i].state
    elif how == "request changed":
        command = dict(requests[i].command, quantity="0.3")
        requests[i] = with_command(requests[i], command)
    return rows


HOWS = [
    "untouched",
    "fact changed",
    "facts undecodable",
    "facts not objects",
    "head escaped",
    "hash escaped",
    "hash not hex",
    "outcome deleted",
    "outcomes swapped",
    "request changed",
]


@pytest.mark.parametrize("how", HOWS)
def test_deciding_the_facts_by_re_execution_finds_what_decoding_them_finds(how: str) -> None:
    requests = flow()
    rows = tampered_rows(requests, how)
    full, heads = Audit(), Audit()
    by_decoding = list(full.run(requests, [decode_outcome(r) for r in rows]))
    by_deciding = list(heads.run(requests, [decode_outcome_head(r) for r in rows]))
    assert by_deciding == by_decoding
    assert heads.report() == full.report()
    if how in ("untouched", "head escaped", "hash escaped"):  # the bytes change, not the value
        assert by_deciding == []
    else:
        assert by_deciding
    if how in ("fact changed", "facts undecodable", "facts not objects"):
        i = next(i for i, r in enumerate(rows) if b'"TradeExecuted"' in r.state or b"[1,2" in r.state)
        assert by_deciding[0].position == rows[i].id


def test_an_honest_log_is_decided_without_decoding_a_single_fact() -> None:
    requests = flow()
    heads = [decode_outcome_head(r) for r in stored_rows(requests)]
    undecided = [o for o in heads if isinstance(o, Undecided)]
    assert len(undecided) == len(heads)

    def refuse(_stored: Any) -> Any:
        raise AssertionError("decoded in full")

    for o in undecided:
        o.decoder = refuse
    assert audit(requests, undecided) == []


@pytest.mark.parametrize("how", ["head escaped", "hash escaped", "hash not hex", "facts not objects"])
def test_a_head_not_in_canonical_form_or_foreign_facts_are_decoded_in_full(how: str) -> None:
    requests = flow()
    rows = tampered_rows(requests, how)
    heads = [decode_outcome_head(r) for r in rows]
    undecided = [isinstance(o, Undecided) for o in heads]
    if how != "facts not objects":
        assert undecided.count(False) == 1
    else:  # the head is canonical; re-execution decides, and the full decoder rejects it
        assert all(undecided)
        assert any(v.code == "undecodable" for v in audit(requests, heads))
