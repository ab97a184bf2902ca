"""The code blocks of docs/read-models.md and of docs/operations.md's projections section run.

Given a SQLite store filled by the real engine, the Python block of read-models.md runs with
``settings`` and ``user_id`` defined, and every shell block of the "Read models and projection
workers" section of operations.md exits 0 (``spotex`` is this checkout's CLI).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from projections.runner import catch_up, followers_for, log_sources
from projections.store import open_read_store
from spotex.config import Settings
from spotex.wiring import build_logs
from tests.integration.conftest import ExchangeFlow, fresh_backend

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Read models and projection workers"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def projections_section(text: str) -> str:
    start = text.index(SECTION)
    following = text.find("\n## ", start + len(SECTION))
    return text[start: following if following != -1 else len(text)]


def _filled(tmp_path: Path) -> Settings:
    with fresh_backend("sqlite", tmp_path, None) as settings:  # type: ignore[arg-type]
        logs = build_logs(settings, create_tables=False)
        flow = ExchangeFlow(logs, seed=4)
        flow.bootstrap()
        flow.trade(80)
        flow.run()
        store = open_read_store(settings)
        followers = followers_for(store, logs)
        for source in log_sources(logs).values():
            catch_up(list(followers.values()), source)
        store.close()
        return settings


def test_read_models_python_block_runs(tmp_path: Path) -> None:
    settings = _filled(tmp_path)
    (code,) = blocks((ROOT / "docs" / "read-models.md").read_text(encoding="utf-8"), "python")
    user_id = ExchangeFlow.user_id("alice")
    namespace: dict[str, object] = {"settings": settings, "user_id": user_id}
    exec(compile(code, "docs/read-models.md", "exec"), namespace)
    store = namespace["store"]
    from projections import queries as q

    assert q.balances(store, user_id)["balances"]  # type: ignore[arg-type]
    store.close()  # type: ignore[attr-defined]


def test_operations_shell_blocks_run(tmp_path: Path) -> None:
    settings = _filled(tmp_path)
    section = projections_section((ROOT / "docs" / "operations.md").read_text(encoding="utf-8"))
    commands = blocks(section, "bash")
    assert len(commands) >= 4
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTEX_")}
    env["SPOTEX_DATA_DIR"] = str(settings.data_dir)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "spotex").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m spotex.cli "$@"\n')
    (shim / "spotex").chmod(0o755)
    env["PATH"] = f"{shim}:{env.get('PATH', '')}"
    for command in commands:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
