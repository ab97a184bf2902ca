"""What the routes are given: the logs, the read models, the limiter, the metrics, the clock.

Built by the composition root (``spotex.serve``) and handed to ``api.app.create_app``; routes
receive it through the ``ServicesDep`` dependency, which tests may override.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api.metrics import Metrics
from api.ratelimit import Limiter, NoLimiter
from api.reads import Reads
from engine.log import Logs
from spotex.config import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


def _nothing() -> None:
    return None


@dataclass
class Services:
    settings: Settings
    logs: Logs
    reads: Reads
    limiter: Limiter = field(default_factory=NoLimiter)
    metrics: Metrics = field(default_factory=Metrics)
    # Called after each append: wakes an in-process engine at once (the embedded default).
    notify: Callable[[], None] = _nothing
    clock: Callable[[], datetime] = utc_now
    # How long ``?wait=true`` waits for the outcome and the read models before answering 202.
    wait_limit: float = 10.0
    # Extra readiness checks of the process (engine or projection threads alive...).
    health: Callable[[], dict[str, Any]] | None = None
    # Not ready when the engine or a projection is further behind than this many positions.
    max_ready_lag: int = 100_000
    # The waits of ``?wait=true`` (``api.bus.Watcher``), made on first use in the app's loop.
    watcher: Any = field(default=None, repr=False)
    # In process with the engine (``spotex serve``): its committed (request, exchange) positions,
    # read from memory instead of the store by ``?wait=true``.
    engine_positions: Callable[[], tuple[int, int]] | None = None
    # With ``spotex serve``: the read models' projected position as they last reported it
    # after a pass, None when stale; ``?wait=true`` then needs no query per look.
    projected_hint: Callable[[], int | None] | None = None
    # The group commit of appends (``api.bus.Appender``), made on first use in the app's loop.
    appender: Any = field(default=None, repr=False)
    # Serve the ordinary place and cancel without FastAPI's routing (``api.fastpath``).
    fast_path: bool = True
    # Listed markets' and assets' immutable specs for the edge checks (``api.edge``).
    specs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, repr=False)
    # /readyz's store checks, each bounded in time (``api.health.StoreProbes``), made on first use.
    store_probes: Any = field(default=None, repr=False)
