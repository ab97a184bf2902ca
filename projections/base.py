"""What every projection is made of: a fold of log events into rows, written in batches.

A projection is one class per read model. The runner (``projections.runner``) gives it a batch
of events inside a transaction: ``begin`` prefetches the rows the batch will touch, ``apply``
folds each event into memory, ``flush`` writes the changed rows; the runner then writes the
tracking row in the same transaction. Nothing is written outside that transaction, so a failure
anywhere rolls back rows and position together (the runner then throws the instance away: its
in-memory state may hold the failed batch).

Rules that keep a rebuild identical to the live tables:

- a row is a function of the events up to the tracking position, never of the batch boundaries,
  the wall clock or the order in which workers ran;
- times come from the events (the outcome's time is its request's time);
- the private ``state`` (listings used for rendering, counters) is saved with the tracking row.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, ClassVar

from domain.markets import Asset, Market
from projections.store import Tx, big, bigs

Row = dict[str, Any]
Key = tuple[Any, ...]
RequestLookup = Callable[[str], dict[str, Any] | None]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LISTINGS = frozenset(("AssetListed", "MarketListed"))


def words(*names: str, listings: bool = True) -> frozenset[bytes]:
    """A projection's ``interest``: fact types (or ``postings``, or a command name), plus the
    listings (which every projection that renders amounts needs) unless told otherwise."""
    return frozenset(n.encode() for n in (*names, *(LISTINGS if listings else ())))


SECOND = timedelta(seconds=1)


def epoch_seconds(iso: str) -> int:
    """Whole seconds since the epoch of an ISO time, without floats."""
    dt = datetime.fromisoformat(iso)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // SECOND


def iso_of(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat()


@functools.lru_cache(maxsize=1 << 14)  # the ledger and the outcome index ask for the same ones
def outcome_event_id(request_id: str) -> str:
    """The event id of the outcome that answers a request: ``uuid5(request id, "outcome")``.

    Computed as ``uuid.uuid5`` does (SHA-1 of the namespace's bytes and the name, version 5,
    RFC 4122 variant), without building UUID objects: it runs for every outcome.
    """
    digest = bytearray(hashlib.sha1(bytes.fromhex(request_id.replace("-", "")) + b"outcome").digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_SNAKE: dict[str, str] = {}


def snake(name: str) -> str:
    """``OrderAccepted`` → ``order_accepted`` (cached: a handful of fact types)."""
    out = _SNAKE.get(name)
    if out is None:
        out = _SNAKE[name] = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return out


def units_str(units: int, precision: int) -> str:
    """Same as ``domain.amounts.format_units`` (checked by a test), on the hot path."""
    if precision == 0:
        return str(units)
    if units < 0:
        digits = str(-units).rjust(precision + 1, "0")
        return f"-{digits[:-precision]}.{digits[-precision:]}"
    digits = str(units).rjust(precision + 1, "0")
    return f"{digits[:-precision]}.{digits[-precision:]}"


class Memo:
    """``f(x)`` remembered for up to ``limit`` arguments (past that the memo starts again): a log
    repeats a few thousand prices, quantities and amounts, so their strings are found instead of
    computed with ``Decimal`` each time. A miss asks ``f``, so the strings are ``f``'s own."""

    __slots__ = ("f", "limit", "memo")

    def __init__(self, f: Callable[[int], str], limit: int = 50_000) -> None:
        self.f = f
        self.limit = limit
        self.memo: dict[int, str] = {}

    def __call__(self, x: int) -> str:
        s = self.memo.get(x)
        if s is None:
            if len(self.memo) >= self.limit:
                self.memo.clear()
            s = self.memo[x] = self.f(x)
        return s


class Formats:
    """One market's decimal strings (``Market.format_price`` / ``format_quantity`` and its quote
    asset's ``units_str``), remembered."""

    __slots__ = ("market", "price", "quantity", "quote")

    def __init__(self, market: Market, limit: int = 50_000) -> None:
        self.market = market
        self.price = Memo(market.format_price, limit)
        self.quantity = Memo(market.format_quantity, limit)
        self.quote = units_memo(market.quote_precision, limit)


def units_memo(precision: int, limit: int = 50_000) -> Memo:
    """``units_str`` for one precision, remembered (amounts repeat: holds, fees, quantities)."""
    return Memo(functools.partial(_units_at, precision), limit)


def _units_at(precision: int, units: int) -> str:
    return units_str(units, precision)


class Catalog:
    """The listings a projection renders with: asset precisions and markets' ticks and lots.

    Listings never change once made, so each projection keeps its own copy in its private state
    (saved with its tracking row) instead of reading another projection's tables, which may be at
    another position or in the middle of a rebuild.
    """

    def __init__(self) -> None:
        self.assets: dict[str, int] = {}
        self.listings: dict[str, dict[str, Any]] = {}
        self.markets: dict[str, Market] = {}
        self.formats: dict[str, Formats] = {}

    def load(self, data: Mapping[str, Any] | None) -> None:
        if not data:
            return
        self.assets = dict(data.get("assets", {}))
        for listing in data.get("markets", []):
            self._add_market(listing)

    def dump(self) -> dict[str, Any]:
        return {"assets": self.assets, "markets": list(self.listings.values())}

    def _add_market(self, listing: Mapping[str, Any]) -> None:
        keep = {k: listing[k] for k in (
            "symbol", "base", "quote", "tick_size", "lot_size", "min_notional", "maker_fee",
            "taker_fee",
        )}
        self.listings[keep["symbol"]] = keep
        market = self.markets[keep["symbol"]] = Market.create(
            keep["symbol"],
            Asset(keep["base"], self.assets[keep["base"]]),
            Asset(keep["quote"], self.assets[keep["quote"]]),
            keep["tick_size"],
            keep["lot_size"],
            keep["min_notional"],
            keep["maker_fee"],
            keep["taker_fee"],
        )
        self.formats[keep["symbol"]] = Formats(market)

    def apply(self, fact: Mapping[str, Any]) -> bool:
        """Take a listing fact into account; True when the catalog changed."""
        kind = fact["type"]
        if kind == "AssetListed":
            self.assets[fact["symbol"]] = fact["precision"]
            return True
        if kind == "MarketListed":
            self._add_market(fact)
            return True
        return False

    def units(self, asset: str, units: int) -> str:
        return units_str(units, self.assets[asset])


_MISSING = object()


class Keyed:
    """A keyed read table, cached in memory, written back as upserts and deletes at flush.

    ``want`` keys while scanning a batch, ``load`` them in one query per table, then ``get``,
    ``put`` and ``delete`` freely. ``complete`` tables (small: levels, markets' state) are read
    whole once and kept. Integer columns named in ``bigs`` are unbounded (see
    ``projections.store``).
    """

    def __init__(
        self,
        table: str,
        key: Sequence[str],
        columns: Sequence[str],
        big_columns: Iterable[str] = (),
        complete: bool = False,
        max_cached: int = 200_000,
        render: Callable[[Row], None] | None = None,
    ) -> None:
        self.table = table
        self.render = render  # fills a dirty row's decimal strings just before it is written
        self.key = tuple(key)
        self.columns = tuple(columns)
        self.big = frozenset(big_columns)
        self.complete = complete
        self.max_cached = max_cached
        self.cache: dict[Key, Row | None] = {}
        self.dirty: dict[Key, Row | None] = {}
        self.wanted: set[Key] = set()
        self.loaded_all = False
        # Keys known to be in the table (None: unknown). Set by ``start_fresh`` on an empty
        # table: new rows are then plain inserts (COPY), and a key never written needs no delete.
        self.stored: set[Key] | None = None
        self._fresh_complete = False
        self.tx: Tx | None = None
        cols = ", ".join(self.columns)
        self._select = f"SELECT {cols} FROM {table}"

    def _row(self, values: Sequence[Any]) -> Row:
        row = dict(zip(self.columns, values, strict=True))
        for c in self.big:
            row[c] = big(row[c])
        return row

    def _key_of(self, row: Row) -> Key:
        key = self.key
        if len(key) == 1:
            return (row[key[0]],)
        return tuple(row[k] for k in key)

    def start_fresh(self) -> None:
        """The table is empty (a rebuild's copy at position 0): a key not in memory has no row,
        so nothing is read back while the cache holds every row (up to ``max_cached``)."""
        self.stored = set()
        self.cache.clear()
        self.dirty.clear()
        self.wanted.clear()
        if not self.complete:
            self.complete = self.loaded_all = self._fresh_complete = True

    @property
    def in_memory(self) -> bool:
        """Every row is in the cache (a miss means no row): nothing to prefetch."""
        return self.complete and self.loaded_all

    def want(self, key: Key) -> None:
        if key not in self.cache:
            self.wanted.add(key)

    def load(self, tx: Tx) -> None:
        """Read the wanted rows (or the whole table once, if complete) into the cache."""
        self.tx = tx
        if self.complete:
            if not self.loaded_all:
                for values in tx.fetchall(self._select):
                    row = self._row(values)
                    self.cache[self._key_of(row)] = row
                self.loaded_all = True
            self.wanted.clear()
            return
        missing = [k for k in self.wanted if k not in self.cache]
        self.wanted.clear()
        if not missing:
            return
        for k in missing:
            self.cache[k] = None
        for values in tx.select_in(self._select, self.key, missing):
            row = self._row(values)
            self.cache[self._key_of(row)] = row

    def get(self, key: Key) -> Row | None:
        row = self.cache.get(key, _MISSING)
        if row is not _MISSING:
            return row  # type: ignore[return-value]
        if self.complete and self.loaded_all:
            return None
        assert self.tx is not None, "load() before get()"
        found = self.tx.select_in(self._select, self.key, [key])
        row = self._row(found[0]) if found else None
        self.cache[key] = row
        return row

    def put(self, row: Row, key: Key | None = None) -> None:
        """Store a row (``key``: its key, if the caller has it at hand)."""
        if key is None:
            key = self._key_of(row)
        self.cache[key] = row
        self.dirty[key] = row

    def delete(self, key: Key) -> None:
        self.cache[key] = None
        self.dirty[key] = None

    def rows(self) -> Iterable[Row]:
        """Every cached row (complete tables: the whole table)."""
        return (r for r in self.cache.values() if r is not None)

    def flush(self, tx: Tx) -> None:
        upserts: list[Sequence[Any]] = []
        inserts: list[Sequence[Any]] = []
        deletes = []
        render = self.render
        columns = self.columns
        values_of = itemgetter(*columns)
        # PostgreSQL's COPY takes an int of any size as it is (NUMERIC); SQLite binds text
        big_at = [i for i, c in enumerate(columns) if c in self.big] if tx.dialect == "sqlite" else []
        stored = self.stored
        for key, row in self.dirty.items():
            if row is None:
                if stored is None:
                    deletes.append(key)
                elif key in stored:
                    deletes.append(key)
                    stored.discard(key)
                continue
            if render is not None:
                render(row)
            values = values_of(row)
            if big_at:
                values = list(values)
                for i in big_at:
                    if values[i] is not None:
                        values[i] = str(values[i])
            if stored is None or key in stored:
                upserts.append(values)
            else:
                inserts.append(values)
                stored.add(key)
        tx.delete_in(self.table, self.key, deletes)
        tx.upsert_many(self.table, columns, self.key, upserts)
        tx.insert_many(self.table, columns, inserts)
        self.dirty.clear()
        if self._fresh_complete and len(self.cache) > self.max_cached:
            # back to reading rows on demand: memory stays bounded on a long log
            self.complete = self.loaded_all = self._fresh_complete = False
            self.stored = None
        if not self.complete and len(self.cache) > self.max_cached:
            self.cache.clear()


class Appends:
    """An append-only read table: rows collected in a batch and inserted at flush.

    Values are of their columns' types (PostgreSQL's binary COPY takes nothing else): unbounded
    integers, the columns named in ``big_columns``, as ``int`` — bound as decimal text on SQLite,
    whose integers stop at 64 bits (see ``projections.store``)."""

    def __init__(self, table: str, columns: Sequence[str], big_columns: Iterable[str] = ()) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.big_at = [i for i, c in enumerate(self.columns) if c in frozenset(big_columns)]
        self.pending: list[tuple[Any, ...]] = []

    def add(self, *values: Any) -> None:
        self.pending.append(values)

    def flush(self, tx: Tx) -> None:
        rows = self.pending
        if self.big_at and tx.dialect == "sqlite":
            rows = [_bigs_at(row, self.big_at) for row in rows]
        tx.insert_many(self.table, self.columns, rows)
        self.pending = []


def _bigs_at(row: tuple[Any, ...], at: Sequence[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in at:
        values[i] = bigs(values[i])
    return tuple(values)


class Projection:
    """One read model: its tables, its fold, and the small state saved with its position."""

    name: ClassVar[str]
    source: ClassVar[str] = "exchange"  # or "requests"
    # table → primary key columns (verify names differing rows by them)
    tables: ClassVar[dict[str, tuple[str, ...]]]
    uses_catalog: ClassVar[bool] = False
    # The fact types it reads, as they appear in the stored JSON; outcomes that name none of
    # them are skipped without being decoded (their position is still tracked). None: all.
    interest: ClassVar[frozenset[bytes] | None] = None
    # What it adds to a rebuild of all 14: µs per outcome of its fold, rendering and writing
    # (py-spy over bench/projections.py, 2026-11-30; the exchange log's reading and decoding,
    # ~21 µs, is paid once per process whatever the group). How a parallel rebuild balances
    # its groups.
    rebuild_cost: ClassVar[int] = 5

    def __init__(self, names: Mapping[str, str], lookup: RequestLookup | None = None) -> None:
        self.t = {logical: names.get(logical, logical) for logical in self.tables}
        self.lookup = lookup
        self.catalog = Catalog()
        self.state_changed = False

    @classmethod
    def keyed_tables(cls) -> frozenset[str]:
        """The tables its fold reads back, rewrites or deletes from by key (``Keyed``); the
        others it only appends to (``Appends``)."""
        return frozenset(k.table for k in cls({}).keyed())

    def keyed(self) -> list[Keyed]:
        """Its ``Keyed`` tables, found among its attributes (by name: a class compiled by
        mypyc keeps its attributes in slots, without a ``__dict__`` for ``vars``)."""
        found = (getattr(self, name) for name in dir(self) if not name.startswith("__"))
        return [value for value in found if isinstance(value, Keyed)]

    # -- private state --------------------------------------------------------------------

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self.uses_catalog:
            self.catalog.load(state.get("catalog"))

    def dump_state(self) -> dict[str, Any]:
        return {"catalog": self.catalog.dump()} if self.uses_catalog else {}

    def state_json(self) -> str | None:
        """The state to save with this batch, or None when unchanged."""
        if not self.state_changed:
            return None
        self.state_changed = False
        return json.dumps(self.dump_state(), sort_keys=True, separators=(",", ":"))

    def listing(self, fact: Mapping[str, Any]) -> None:
        if fact["type"] in LISTINGS and self.uses_catalog and self.catalog.apply(fact):
            self.state_changed = True

    # -- the fold -------------------------------------------------------------------------

    def start_fresh(self) -> None:
        """Called on a new instance whose tables are known to be empty (a rebuild's copies at
        position 0): its keyed tables then need no reads while they fit in memory."""
        for table in self.keyed():
            table.start_fresh()

    def begin(self, tx: Tx, events: Sequence[Any]) -> None:
        """Prefetch what the batch touches (default: nothing)."""

    def apply(self, event: Any) -> None:
        raise NotImplementedError

    def flush(self, tx: Tx) -> None:
        raise NotImplementedError
