"""The build backend: setuptools' own, which asks for mypy only for a compiled build.

``pyproject.toml``'s ``[build-system] requires`` is installed into every isolated build, pure ones
too, so mypy (for mypyc, ~50 MB installed) used to be fetched and unpacked by every
``pip install .`` and ``pip install -e .``. This backend adds it to the build's requirements only
when ``SPOTEX_MYPYC=1`` is set (``setup.py`` reads the same variable). Everything else is
``setuptools.build_meta``, re-exported as it is.

setuptools' ``get_requires_for_build_*`` run ``setup.py`` to collect ``setup_requires``; ours has
none, and running it before mypy is installed would fail on a compiled build, so these hooks
answer directly.
"""

from __future__ import annotations

import os

from setuptools.build_meta import *  # noqa: F403  (the other hooks, as setuptools defines them)

MYPY = "mypy==2.4.1"  # the dev extras pin the same (tests/unit/test_build_backend.py)


def compiled_requires() -> list[str]:
    """What a build needs beyond ``[build-system] requires``: mypy when ``SPOTEX_MYPYC=1``."""
    return [MYPY] if os.environ.get("SPOTEX_MYPYC", "0") == "1" else []


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    return compiled_requires()


def get_requires_for_build_editable(config_settings: dict[str, object] | None = None) -> list[str]:
    return compiled_requires()


def get_requires_for_build_sdist(config_settings: dict[str, object] | None = None) -> list[str]:
    return []
