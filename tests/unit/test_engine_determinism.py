"""The engine's output does not depend on the hash seed: same requests, same bytes.

``determinism_flow.py`` runs a seeded flow of a few thousand requests (orders of every kind,
amends, cancels, money, halts, a delisting) and prints each request's facts as canonical JSON
and the final state hash. It runs in subprocesses under ``PYTHONHASHSEED`` 1, 2 and ``random``;
the outputs must be equal byte for byte. This is the only I/O in the unit tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FLOW = Path(__file__).with_name("determinism_flow.py")
ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 3000


def start_flow(hash_seed: str, seed: int = 7) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}  # spotex as installed: pure or compiled
    return subprocess.Popen(
        [sys.executable, str(FLOW), str(seed), str(REQUESTS)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture(scope="module")
def outputs() -> dict[str, bytes]:
    """The flow's output per hash seed; the three processes run side by side."""
    running = {seed: start_flow(seed) for seed in ("1", "2", "random")}
    out = {}
    for seed, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
        out[seed] = stdout
    return out


def test_the_same_requests_give_the_same_facts_under_any_hash_seed(outputs: dict[str, bytes]) -> None:
    first = outputs["1"]
    for seed, output in outputs.items():
        assert output == first, f"PYTHONHASHSEED={seed} changed the facts"


def test_the_same_requests_give_the_same_state_hash(outputs: dict[str, bytes]) -> None:
    hashes = {seed: output.rsplit(b"\n", 2)[-2] for seed, output in outputs.items()}
    assert len(set(hashes.values())) == 1, hashes
    assert hashes["1"].startswith(b"state ") and len(hashes["1"]) == len(b"state ") + 64


def test_the_flow_exercises_the_engine(outputs: dict[str, bytes]) -> None:
    """A flow that only produced rejections would prove nothing."""
    lines = outputs["1"].splitlines()[:-1]
    types: dict[str, int] = {}
    for line in lines:
        for fact in json.loads(line):
            key = fact["type"] if fact["type"] != "OrderClosed" else f"OrderClosed/{fact['reason']}"
            types[key] = types.get(key, 0) + 1
    assert len(lines) > REQUESTS
    assert types.get("TradeExecuted", 0) > 300, types
    for kind in (
        "OrderBooked", "OrderAmended", "OrderRejected", "WithdrawalRequested", "Transferred",
        "OrderClosed/self_trade", "OrderClosed/user", "OrderClosed/budget_spent",
        "OrderClosed/market_delisted", "MarketStatusChanged",
    ):  # fmt: skip
        assert types.get(kind, 0) > 0, (kind, types)
