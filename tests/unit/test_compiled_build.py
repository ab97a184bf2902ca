"""The build under test is the one asked for: compiled (mypyc) or pure Python.

``scripts/test.sh`` runs the engine, domain, audit and projection tests a second time against the
compiled wheel installed in ``.venv-mypyc``, with ``SPOTEX_EXPECT_COMPILED=1``; everywhere else the
modules are the checkout's Python files (the editable install). Given the modules ``setup.py``
compiles, when they are imported here, then each is a C extension inside the installed package
when compiled is expected — so a checkout earlier on ``sys.path`` (``python -m pytest`` puts the
working directory first) cannot shadow the build the figures and production run on — and each
is the checkout's ``.py`` file otherwise, so no stale compiled module is picked up silently.
"""

from __future__ import annotations

import ast
import importlib
import os
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compiled_modules() -> list[str]:
    """``setup.py``'s ``COMPILED`` list, read without running the build."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["COMPILED"]:
            paths = ast.literal_eval(node.value)
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


EXPECT_COMPILED = os.environ.get("SPOTEX_EXPECT_COMPILED", "0")


def test_the_compiled_list_names_the_hot_path() -> None:
    modules = compiled_modules()
    assert {"engine.exchange", "engine.audit", "domain.ledger"} <= set(modules)
    for name in modules:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name


def test_every_read_model_is_compiled_with_the_projection_base() -> None:
    """A class compiled by mypyc cannot be the base of an interpreted one: with
    ``projections.base`` compiled, a read model whose module is not in the list would not even
    import in the compiled build. So every class the registry names is compiled, with its base."""
    from projections.registry import PROJECTIONS

    modules = set(compiled_modules())
    assert "projections.base" in modules
    missing = sorted({cls.__module__ for cls in PROJECTIONS.values()} - modules)
    assert not missing, f"read models left out of setup.py's COMPILED: {missing}"


@pytest.mark.parametrize("name", compiled_modules())
def test_the_module_is_from_the_build_under_test(name: str) -> None:
    assert EXPECT_COMPILED in ("0", "1"), f"SPOTEX_EXPECT_COMPILED={EXPECT_COMPILED!r}"
    path = Path(importlib.import_module(name).__file__ or "")
    if EXPECT_COMPILED == "1":
        assert path.suffix == ".so", f"{name} imported from {path}, not the compiled build"
        assert "site-packages" in path.parts, f"{name} imported from {path}, not the installed wheel"
    else:
        assert path.suffix == ".py", f"{name} imported from {path}: a compiled module in a pure run"
        assert path == ROOT / (name.replace(".", "/") + ".py"), f"{name} imported from {path}"


def test_what_the_segment_workers_exchange_unpickles() -> None:
    """``spotex audit --jobs`` sends each worker a ``Segment`` and gets ``AuditViolation``s back,
    pickled: one that does not unpickle leaves the pool waiting for ever. A compiled frozen
    dataclass does not (``FrozenInstanceError``), hence ``mypyc_attr(native_class=False)`` on
    ``AuditViolation``; without it this test fails in the compiled build."""
    from engine.audit import AuditViolation
    from spotex.audit_cli import Segment

    found = AuditViolation("exchange", 7, "r-7", "chain_break", "prev_hash differs", 7, 6)
    segment = Segment({"seq": 100}, None, {100: {"seq": 100}})
    assert pickle.loads(pickle.dumps(found)) == found
    assert pickle.loads(pickle.dumps(segment)) == segment
