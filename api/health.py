"""Readiness: the stores answer, the engine and every read model keep up, nothing is stuck.

Not ready (503) when a store cannot be read, a read model stopped on a failing event, the engine
or a read model is more than ``Services.max_ready_lag`` positions behind, or a check of the
process itself (``Services.health``: the embedded engine thread is alive...) fails.
"""

from __future__ import annotations

from typing import Any

from api.services import Services


def readiness(services: Services) -> dict[str, Any]:
    stores: dict[str, str] = {}
    engine: dict[str, Any] = {}
    projections: dict[str, Any] = {}
    problems: list[str] = []
    logs = services.logs
    try:
        head = logs.last_request_position()
        at = logs.engine_position()
        engine = {"position": at, "head": head, "lag": max(0, head - at)}
        stores["event_store"] = "ok"
    except Exception as exc:
        stores["event_store"] = f"unreachable: {type(exc).__name__}"
        problems.append("the event store cannot be read")
    try:
        for name, row in sorted(services.reads.status().items()):
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
