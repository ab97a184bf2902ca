"""The build backend (``_build/backend.py``) asks for mypy only when a compiled build is asked for.

Given the backend as ``pyproject.toml`` names it, when a build asks for its requirements with or
without ``SPOTEX_MYPYC=1``, then mypy — at the dev extras' pin — is required for a compiled build
only, and never by ``[build-system] requires``, which every isolated build installs.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def backend() -> ModuleType:
    system = PYPROJECT["build-system"]
    (where,) = system["backend-path"]
    path = ROOT / where / f"{system['build-backend']}.py"
    spec = importlib.util.spec_from_file_location("spotex_build_backend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pure_build_requires_no_mypy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOTEX_MYPYC", raising=False)
    b = backend()
    assert b.get_requires_for_build_wheel() == []
    assert b.get_requires_for_build_editable() == []
    monkeypatch.setenv("SPOTEX_MYPYC", "0")
    assert b.get_requires_for_build_wheel() == []
    assert not any(r.startswith("mypy") for r in PYPROJECT["build-system"]["requires"])


def test_a_compiled_build_requires_mypy_at_the_dev_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOTEX_MYPYC", "1")
    b = backend()
    (dev_mypy,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["dev"] if r.startswith("mypy==")]
    assert b.get_requires_for_build_wheel() == [dev_mypy]
    assert b.get_requires_for_build_editable() == [dev_mypy]
    assert b.get_requires_for_build_sdist() == []


def test_the_other_hooks_are_setuptools_own() -> None:
    from setuptools import build_meta

    b = backend()
    for hook in ("build_wheel", "build_sdist", "build_editable", "prepare_metadata_for_build_wheel"):
        assert getattr(b, hook) is getattr(build_meta, hook)
