"""The read store: where read tables live, and the transactions that read and write them.

One small interface over two dialects so that projections and queries are written once:

- SQLite (the embedded default, ``$SPOTEX_DATA_DIR/read.sqlite``): WAL mode, one connection per
  thread, writes in ``BEGIN IMMEDIATE`` transactions (SQLite has one writer at a time; the
  tracking check inside the transaction is what makes a batch exactly-once).
- PostgreSQL (production, the event store's database): a psycopg pool; writes in ordinary
  transactions, reads in ``REPEATABLE READ READ ONLY`` ones so that a query sees one snapshot.
- ``memory://``: one in-memory SQLite connection shared under a lock (tests).

SQL is written once with ``?`` placeholders (converted to ``%s`` for psycopg). Integers that can
exceed 64 bits (amounts in smallest units, prices in ticks, quantities in lots) are bound as
decimal text: PostgreSQL stores them as ``NUMERIC(78,0)``, SQLite as TEXT (its integers stop at
64 bits, and 18-decimal assets pass that quickly). Read them back with ``big``. The projections'
bulk writes on PostgreSQL are binary ``COPY`` (``Tx.copy_in``), which takes each value in its
column's type: there those integers go as ``int`` (``Appends`` and ``Keyed`` turn them into text
for SQLite).

Nothing here creates tables: ``projections.migrate`` does, once, in ``spotex migrate``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg._copy_base import format_row_binary

from spotex.config import POOL_WAIT_SECONDS, Settings

SQLITE_CHUNK = 400  # bound variables per statement stay under SQLite's limit
# The binary COPY format's header (signature, no flags, no extension) and trailer (PostgreSQL's
# "COPY" reference, "Binary Format"), which ``Tx.copy_in`` writes around the rows it formats
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
COPY_CHUNK = 1 << 20  # bytes handed to the connection at a time


def big(value: Any) -> int | None:
    """An unbounded integer column as read back (Decimal on PostgreSQL, text on SQLite)."""
    if value is None:
        return None
    return int(value)


def bigs(value: int | None) -> str | None:
    """An unbounded integer as bound into a statement."""
    return None if value is None else str(value)


class Tx:
    """One open transaction: execute statements, fetch rows, bulk-insert."""

    def __init__(self, store: ReadStore, conn: Any) -> None:
        self.store = store
        self.conn = conn
        self.dialect = store.dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.store.sql(sql), params)

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == "postgres":
            with self.conn.cursor() as cur:
                cur.executemany(self.store.sql(sql), rows)
        else:
            self.conn.executemany(sql, rows)

    def column_types(self, table: str, columns: Sequence[str]) -> list[int]:
        """PostgreSQL: the type OIDs of a table's columns, asked once per table name and columns
        (a rebuild's copies and the upserts' temporary tables are made ``LIKE`` the live table)."""
        key = (table, tuple(columns))
        found = self.store.types_cache.get(key)
        if found is None:
            rows = self.fetchall(
                "SELECT attname, atttypid::int FROM pg_attribute"
                " WHERE attrelid = ?::regclass AND attnum > 0 AND NOT attisdropped", (table,))
            oids = {name: oid for name, oid in rows}
            found = self.store.types_cache[key] = [oids[c] for c in columns]
        return found

    def copy_in(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """PostgreSQL: rows into a table by ``COPY … (FORMAT BINARY)``. Each value must be of its
        column's own type — an ``int`` for BIGINT, INTEGER and NUMERIC, a ``str`` for TEXT, a
        ``bool`` for BOOLEAN, or None — or the COPY fails (nothing is converted silently): the
        binary format spares psycopg's text formatter and the server's parsing of every value."""
        types = self.column_types(table, columns)
        cols = ", ".join(columns)
        with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            # Each row formatted by the very function ``copy.write_row`` calls (psycopg's C
            # ``format_row_binary``, with the dumpers ``set_types`` chose), into one buffer sent
            # in large blocks: ``write_row``'s two Python calls per row cost more than the
            # formatting (a rebuild writes ~11 rows an outcome). In block mode psycopg sends the
            # bytes as they are, so the header and the trailer are written here.
            transformer = copy.formatter.transformer
            out = bytearray(COPY_HEADER)
            for row in rows:
                format_row_binary(row, transformer, out)
                if len(out) > COPY_CHUNK:
                    copy.write(out)
                    out = bytearray()
            out += COPY_TRAILER
            copy.write(out)

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Append rows (binary COPY on PostgreSQL, values of their columns' types: ``copy_in``;
        executemany on SQLite)."""
        if not rows:
            return
        cols = ", ".join(columns)
        if self.dialect == "postgres":
            self.copy_in(table, columns, rows)
        else:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)

    def upsert_many(
        self, table: str, columns: Sequence[str], key: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Insert or replace whole rows by primary key.

        PostgreSQL: COPY into a session-local temporary copy of the table, then one
        ``INSERT … SELECT … ON CONFLICT DO UPDATE`` (one round trip per batch instead of one
        statement per row). SQLite: executemany of the same upsert.
        """
        if not rows:
            return
        cols = ", ".join(columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        if self.dialect == "postgres":
            temp = f"up_{table}"[:63]
            self.conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {table}) ON COMMIT DELETE ROWS"
            )
            self.conn.execute(f"DELETE FROM {temp}")
            self.copy_in(temp, columns, rows)
            self.conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} {conflict}")
        else:
            marks = ", ".join("?" * len(columns))
            self.conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) {conflict}", rows)

    def select_in(
        self, sql_head: str, key_columns: Sequence[str], keys: Iterable[tuple[Any, ...]]
    ) -> list[Any]:
        """``sql_head WHERE (k1, k2) IN (VALUES …)`` for many keys, in chunks."""
        out: list[Any] = []
        for where, params in self._in_chunks(key_columns, keys):
            out.extend(self.fetchall(f"{sql_head} WHERE {where}", params))
        return out

    def delete_in(self, table: str, key_columns: Sequence[str], keys: Sequence[tuple[Any, ...]]) -> None:
        """Delete the rows with these keys: on PostgreSQL one ``DELETE … WHERE (k1, k2) IN
        (VALUES …)`` per chunk of keys (a rebuild deletes ~22,000 book rows, one statement each
        cost ~2 µs of client and more of the server's CPU per outcome); on SQLite one statement
        per key, as before (its text-affine columns compare with a bound key as they always
        did)."""
        if not keys:
            return
        if self.dialect != "postgres":
            where = " AND ".join(f"{k} = ?" for k in key_columns)
            self.executemany(f"DELETE FROM {table} WHERE {where}", keys)
            return
        for where, params in self._in_chunks(key_columns, keys):
            self.execute(f"DELETE FROM {table} WHERE {where}", params)

    def _in_chunks(
        self, key_columns: Sequence[str], keys: Iterable[tuple[Any, ...]]
    ) -> Iterator[tuple[str, list[Any]]]:
        keys = list(keys)
        width = len(key_columns)
        chunk = max(1, SQLITE_CHUNK // width) if self.dialect == "sqlite" else 1000
        cols = ", ".join(key_columns)
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            if width == 1:
                marks = ", ".join("?" * len(part))
                params: list[Any] = [k[0] for k in part]
                where = f"{cols} IN ({marks})"
            else:
                one = "(" + ", ".join("?" * width) + ")"
                marks = ", ".join([one] * len(part))
                params = [v for k in part for v in k]
                where = f"({cols}) IN (VALUES {marks})"
            yield where, params


class ReadStore:
    """The read tables' database; thread-safe. ``close()`` when done."""

    dialect: str

    def __init__(self) -> None:
        self._sql_cache: dict[str, str] = {}
        self.types_cache: dict[tuple[str, tuple[str, ...]], list[int]] = {}  # Tx.column_types

    def sql(self, text: str) -> str:
        return text

    @contextlib.contextmanager
    def write(self, durable: bool = True) -> Iterator[Tx]:
        """A write transaction. ``durable=False`` lets PostgreSQL acknowledge the commit before
        its WAL is flushed (``synchronous_commit = off``): a server crash may then lose the last
        fraction of a second of commits — whole transactions, rows together with their tracking
        position — which the projections simply apply again. Never for anything else."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Tx]:
        """A connection outside any transaction (DDL helpers, advisory locks)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def lock_path(self, name: str) -> Path | None:
        """Where a file lock for ``name`` lives (SQLite on disk), or None."""
        return None

    def close(self) -> None:
        """Release connections."""

    # -- ordering helpers for unbounded integer columns ------------------------------------

    def order_big(self, column: str, desc: bool = False) -> str:
        """ORDER BY fragment that sorts a non-negative unbounded integer column numerically."""
        direction = " DESC" if desc else ""
        if self.dialect == "sqlite":  # decimal text: shorter is smaller, then digit by digit
            return f"length({column}){direction}, {column}{direction}"
        return f"{column}{direction}"


class SQLiteStore(ReadStore):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.memory = path == ":memory:"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._shared_lock = threading.RLock()
        self._shared: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        with self._guard:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self.memory:
            with self._shared_lock:
                if self._shared is None:
                    self._shared = self._connect()
                yield self._shared
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        yield conn

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        with self._connection() as conn:
            if conn.in_transaction:  # a nested use on the same thread: join the transaction
                yield Tx(self, conn)
                return
            conn.execute(begin)
            try:
                yield Tx(self, conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self, durable: bool = True) -> Iterator[Tx]:
        with self._transaction("BEGIN IMMEDIATE") as tx:
            yield tx

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        with self._transaction("BEGIN") as tx:
            yield tx

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Tx]:
        with self._connection() as conn:
            yield Tx(self, conn)

    def lock_path(self, name: str) -> Path | None:
        if self.memory:
            return None
        return Path(self.path).parent / "locks" / f"{name}.lock"

    def close(self) -> None:
        with self._guard:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()
        self._shared = None


class PostgresStore(ReadStore):
    dialect = "postgres"

    def __init__(self, url: str, max_size: int = 10) -> None:
        super().__init__()
        from psycopg_pool import ConnectionPool

        self.url = url
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=POOL_WAIT_SECONDS,  # a lost database: an error in seconds (spotex.config)
            kwargs={"autocommit": True},
            open=True,
            name="spotex-read",
        )
        self._lock_guard = threading.Lock()
        self._lock_conn: Any = None

    def sql(self, text: str) -> str:
        out = self._sql_cache.get(text)
        if out is None:
            out = text.replace("?", "%s")
            self._sql_cache[text] = out
        return out

    @contextlib.contextmanager
    def write(self, durable: bool = True) -> Iterator[Tx]:
        with self.pool.connection() as conn, conn.transaction():
            if not durable:
                conn.execute("SET LOCAL synchronous_commit = off")
            yield Tx(self, conn)

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield Tx(self, conn)

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Tx]:
        with self.pool.connection() as conn:
            yield Tx(self, conn)

    def advisory(self, statement: str) -> bool:
        """Run an advisory-lock statement on this store's one lock session (shared by all the
        projection locks of the process; reconnected if it broke — its locks died with it)."""
        return self.advisory_row(statement)[0]

    def advisory_row(self, statement: str) -> tuple[bool, ...]:
        """``advisory`` for a statement with several columns (several locks in one round trip)."""
        import psycopg

        with self._lock_guard:
            for attempt in (1, 2):
                if self._lock_conn is None or self._lock_conn.closed:
                    self._lock_conn = psycopg.connect(self.url, autocommit=True)
                try:
                    row = self._lock_conn.execute(statement).fetchone()
                    return tuple(bool(v) for v in row)
                except psycopg.OperationalError:
                    self._lock_conn = None
                    if attempt == 2:
                        raise
        return (False,)

    def close(self) -> None:
        with self._lock_guard:
            if self._lock_conn is not None:
                with contextlib.suppress(Exception):
                    self._lock_conn.close()
                self._lock_conn = None
        self.pool.close()


def open_read_store(settings: Settings) -> ReadStore:
    """The read store of this configuration (no tables are created here)."""
    backend = settings.backend
    if backend == "postgres":
        assert settings.database_url
        return PostgresStore(settings.database_url)
    if backend == "memory":
        return SQLiteStore(":memory:")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(settings.data_dir / "read.sqlite"))


def as_decimal(value: Any) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))
