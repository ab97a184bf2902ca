"""Which spotex a benchmark measures, and a line that says which ran.

By default this checkout, first on ``sys.path``. With ``--installed``, the spotex installed in
the running Python (the compiled build): its packages are imported first, from the installation
(``bench.engine`` puts the checkout first on ``sys.path`` again when imported; submodules still
come from the packages already imported), and the checkout only lends ``bench``. A benchmark's
worker processes run its module again, so they choose the same.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence


def choose(root: str, argv: Sequence[str]) -> bool:
    """Put the checkout (``root``) or the installation first; True for ``--installed``."""
    installed = "--installed" in argv[1:]
    if installed:
        # not the script's directory either: bench/engine.py would be imported as ``engine``
        sys.path[:] = [p for p in sys.path if p not in (root, os.path.join(root, "bench"))] + [root]
        for package in ("api", "domain", "engine", "projections", "spotex"):
            importlib.import_module(package)
    else:
        sys.path.insert(0, root)
    return installed


def describe(names: Sequence[str], path: str) -> str:
    """``build: …``: how many of ``names`` (modules ``setup.py`` compiles, on the measured
    ``path``, e.g. "audit-path") are C extensions, and where the packages came from."""
    files = {n: str(importlib.import_module(n).__file__) for n in names}
    compiled = [n for n, f in files.items() if f.endswith(".so")]
    where = os.path.dirname(os.path.dirname(files[names[0]]))
    if not compiled:
        return f"build: pure Python (from {where})"
    python = [n for n in names if n not in compiled]
    return (f"build: compiled with mypyc (from {where}): {len(compiled)} of {len(names)} {path} "
            "modules are C extensions" + (f"; Python: {', '.join(python)}" if python else ""))
