"""Apply the numbered SQL files of ``migrations/`` to the read store, once each, in order.

``spotex migrate`` is the only thing that creates or alters read tables (workers and the api
never do, so they never race on DDL). Files are ``NNNN_name.<dialect>.sql``; each applies in one
transaction together with its row in ``schema_migrations``, so a failed migration leaves no
trace and running ``migrate`` again is harmless. On PostgreSQL concurrent runs serialise on an
advisory lock; on SQLite on the write lock.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from projections.store import ReadStore, Tx


def _migrations_dir() -> Path:
    """``migrations/`` beside the source (a checkout, an editable install), else where a
    regular install puts it (``<prefix>/share/spotex/migrations``, pyproject's data-files)."""
    beside = Path(__file__).resolve().parent.parent / "migrations"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "spotex" / "migrations"


MIGRATIONS = _migrations_dir()
FILE_RE = re.compile(r"^(\d{4}_[a-z0-9_]+)\.(sqlite|postgres)\.sql$")
LOCK_KEY = 0x5B07E8_0001  # the advisory lock that serialises migrations


def migration_files(dialect: str) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(MIGRATIONS.iterdir()):
        m = FILE_RE.match(path.name)
        if m and m.group(2) == dialect:
            found.append((m.group(1), path))
    return found


def statements(text: str) -> list[str]:
    """The statements of a migration file (comments dropped; no ';' inside literals)."""
    body = re.sub(r"--[^\n]*", "", text)
    return [s.strip() for s in body.split(";") if s.strip()]


def _bootstrap(tx: Tx) -> None:
    if tx.dialect == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )


def applied(store: ReadStore) -> list[str]:
    with store.write() as tx:
        _bootstrap(tx)
        return [r[0] for r in tx.fetchall("SELECT version FROM schema_migrations ORDER BY version")]


def migrate_read_store(store: ReadStore) -> list[str]:
    """Apply what is missing; returns the versions applied now (empty when up to date)."""
    done = []
    for version, path in migration_files(store.dialect):
        with store.write() as tx:
            _bootstrap(tx)
            if tx.fetchone("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)):
                continue
            for stmt in statements(path.read_text(encoding="utf-8")):
                tx.execute(stmt)
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, datetime.now(UTC).isoformat()),
            )
        done.append(version)
    register_projections(store)
    return done


def register_projections(store: ReadStore) -> None:
    """A tracking row at position 0 for every projection that has none yet."""
    from projections.registry import PROJECTIONS
    from projections.tracking import ensure_tracking

    with store.write() as tx:
        for cls in PROJECTIONS.values():
            ensure_tracking(tx, cls.name, cls.source)
