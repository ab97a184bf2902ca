"""The tracking rows: each projection's position, written in the same transaction as its rows.

``projection_tracking`` holds one row per projection (and one per rebuild or verify in progress,
named ``<name>@<shadow>``): the last log position applied, a ``generation`` that changes when a
rebuild swaps new tables in (so a worker holding cached rows of the old tables notices), and the
projection's small private state. ``projection_errors`` holds the event a projection stopped at,
in a separate transaction (the failed batch rolled back), until a later batch passes it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from projections.store import ReadStore, Tx


def new_generation() -> str:
    return secrets.token_hex(8)


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class Tracked:
    position: int
    generation: str
    state: str


def ensure_tracking(tx: Tx, name: str, source: str) -> None:
    tx.execute(
        "INSERT INTO projection_tracking (name, source, position, generation, state) "
        "VALUES (?, ?, 0, ?, '{}') ON CONFLICT (name) DO NOTHING",
        (name, source, new_generation()),
    )


def lock_tracking(tx: Tx, name: str) -> Tracked | None:
    """Read the row for update: a second writer of this projection waits here, then sees the
    position moved and starts again from it (SQLite's write lock does the same)."""
    sql = "SELECT position, generation, state FROM projection_tracking WHERE name = ?"
    if tx.dialect == "postgres":
        sql += " FOR UPDATE"
    row = tx.fetchone(sql, (name,))
    return None if row is None else Tracked(int(row[0]), row[1], row[2])


def save_tracking(tx: Tx, name: str, position: int, state: str | None) -> None:
    if state is None:
        tx.execute(
            "UPDATE projection_tracking SET position = ?, updated_at = ? WHERE name = ?",
            (position, now(), name),
        )
    else:
        tx.execute(
            "UPDATE projection_tracking SET position = ?, updated_at = ?, state = ? WHERE name = ?",
            (position, now(), state, name),
        )
    tx.execute("DELETE FROM projection_errors WHERE name = ?", (name,))


def record_error(store: ReadStore, name: str, position: int, message: str) -> None:
    with store.write() as tx:
        tx.execute(
            "INSERT INTO projection_errors (name, position, message, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position, "
            "message = excluded.message, at = excluded.at",
            (name, position, message[:4000], now()),
        )


def read_tracking(tx: Tx) -> dict[str, dict[str, Any]]:
    """Every tracking row with its error, if any."""
    errors = {
        r[0]: {"position": int(r[1]), "message": r[2], "at": r[3]}
        for r in tx.fetchall("SELECT name, position, message, at FROM projection_errors")
    }
    out = {}
    for name, source, position, updated_at in tx.fetchall(
        "SELECT name, source, position, updated_at FROM projection_tracking ORDER BY name"
    ):
        out[name] = {
            "source": source,
            "position": int(position),
            "updated_at": updated_at,
            "error": errors.get(name),
        }
    return out
