"""The composition root: build the stores and services from ``Settings``, once per process."""

from __future__ import annotations

import contextlib

import psycopg
from eventsourcing.persistence import InterfaceError as StoreInterfaceError
from eventsourcing.persistence import OperationalError as StoreOperationalError

from engine.log import Logs
from spotex.config import Settings, event_store_envs

# What a lost or refusing database raises (a restart, a failover, terminated connections, no
# free connection in time): through the library, which wraps psycopg's errors, or from psycopg
# and its pool where the stores are read directly (psycopg_pool.PoolTimeout is an
# OperationalError). What to do then is to wait and retry; nothing else is implied.
STORE_UNREACHABLE: tuple[type[Exception], ...] = (
    StoreOperationalError, StoreInterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


def build_logs(settings: Settings, create_tables: bool = True, pool_size: int | None = None) -> Logs:
    """The requests log, exchange log and snapshot store for this configuration (``pool_size``:
    see ``event_store_envs``)."""
    return Logs.open(event_store_envs(settings, create_tables=create_tables, pool_size=pool_size))


def close_logs(logs: Logs) -> None:
    """Close the connection pools of ``logs``' recorders (a pool otherwise keeps reconnecting)."""
    seen: set[int] = set()
    for recorder in (logs.requests, logs.exchange, logs.snapshots):
        datastore = getattr(recorder, "datastore", None)
        if datastore is not None and id(datastore) not in seen:
            seen.add(id(datastore))
            with contextlib.suppress(Exception):
                datastore.close()
