"""The composition root: build the stores and services from ``Settings``, once per process."""

from __future__ import annotations

from engine.log import Logs
from spotex.config import Settings, event_store_envs


def build_logs(settings: Settings, create_tables: bool = True, pool_size: int | None = None) -> Logs:
    """The requests log, exchange log and snapshot store for this configuration (``pool_size``:
    see ``event_store_envs``)."""
    return Logs.open(event_store_envs(settings, create_tables=create_tables, pool_size=pool_size))
