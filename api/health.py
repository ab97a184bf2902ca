"""Readiness: the stores answer, the engine and every read model keep up, nothing is stuck.

Not ready (503) when a store cannot be read, a read model stopped on a failing event, the engine
or a read model is more than ``Services.max_ready_lag`` positions behind, or a check of the
process itself (``Services.health``: the embedded engine thread is alive...) fails.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from api.services import Services

# How long /readyz waits for each store. A lost database does not fail at once: the event
# store's library retries a read ten times, each waiting for a pooled connection, so a check
# could hold /readyz for most of a minute — longer than any load balancer waits.
STORE_CHECK_SECONDS = 3.0


class StoreProbes:
    """Each store's check in a thread of its own, waited for at most ``STORE_CHECK_SECONDS``; a
    check still hanging from an earlier /readyz is not started again (no pile-up of threads)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="spotex-readyz")
        self._pending: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def check(self, name: str, probe: Callable[[], Any]) -> Any:
        with self._lock:
            future = self._pending.get(name)
            if future is None or future.done():
                future = self._pending[name] = self._executor.submit(probe)
        try:
            return future.result(timeout=STORE_CHECK_SECONDS)
        except FutureTimeout:
            raise TimeoutError(f"no answer in {STORE_CHECK_SECONDS:g} s") from None


def _probes(services: Services) -> StoreProbes:
    if services.store_probes is None:
        services.store_probes = StoreProbes()
    probes: StoreProbes = services.store_probes
    return probes


def readiness(services: Services) -> dict[str, Any]:
    stores: dict[str, str] = {}
    engine: dict[str, Any] = {}
    projections: dict[str, Any] = {}
    problems: list[str] = []
    logs = services.logs
    probes = _probes(services)
    try:
        head, at = probes.check("event_store",
                                lambda: (logs.last_request_position(), logs.engine_position()))
        engine = {"position": at, "head": head, "lag": max(0, head - at)}
        stores["event_store"] = "ok"
    except Exception as exc:
        stores["event_store"] = f"unreachable: {type(exc).__name__}"
        problems.append("the event store cannot be read")
    try:
        for name, row in sorted(probes.check("read_store", services.reads.status).items()):
            projections[name] = {
                "position": row.get("position"),
                "lag": int(row.get("lag") or 0),
                "error": row.get("error"),
            }
            if row.get("error"):
                problems.append(f"read model {name} stopped on an error")
            elif projections[name]["lag"] > services.max_ready_lag:
                problems.append(f"read model {name} is {projections[name]['lag']} positions behind")
        stores["read_store"] = "ok"
    except Exception as exc:
        stores["read_store"] = f"unreachable: {type(exc).__name__}"
        problems.append("the read store cannot be read")
    if engine and engine["lag"] > services.max_ready_lag:
        problems.append(f"the engine is {engine['lag']} requests behind")
    process: dict[str, Any] = {}
    if services.health is not None:
        process = services.health()
        problems += [f"{k}: {v}" for k, v in process.items() if v != "ok"]
    return {
        "ready": not problems,
        "problems": problems,
        "stores": stores,
        "engine": engine,
        "projections": projections,
        "process": process,
    }
