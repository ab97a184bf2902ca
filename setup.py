"""Build hook: with ``SPOTEX_MYPYC=1`` set at build time, the engine's hot modules and the read
models' folds are compiled to C extensions with mypyc (the way mypy and black ship); without it
the build is pure Python.

Everything else (metadata, packages, data files) is in ``pyproject.toml``. The compiled build is
what the production image and the audit and rebuild figures run on (``docs/audit.md``,
``docs/performance.md``); CI tests it after the pure suite (``scripts/test.sh``). An editable
install (``pip install -e .``) stays pure Python unless ``SPOTEX_MYPYC=1`` is set, so a shared
checkout never imports stale compiled modules.

The projections: ``projections/base.py`` and every read model's module (the folds) are compiled
together: a compiled class cannot be the base of an interpreted one, so a new read model goes on
the list too (``tests/unit/test_compiled_build.py`` checks it). A compiled class's methods are
called through a vtable by compiled code, so a test that monkeypatches one runs on the pure build
only (``scripts/test.sh``).

Left out of ``COMPILED`` (they stay Python in the compiled build too):
``domain/commands.py`` (pydantic models),
``engine/log.py`` (eventsourcing's ``DomainEvent`` metaclass), ``engine/sequencer.py``
(subclasses a builtin), and the modules that are I/O and glue (``api``, ``spotex``, and in
``projections`` the store, runner, rebuild, pages, queries, workers and delivery).
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = [
    "domain/amounts.py",
    "domain/ledger.py",
    "domain/markets.py",
    "domain/orders.py",
    "engine/appliers.py",
    "engine/audit.py",
    "engine/audit_book.py",
    "engine/audit_decode.py",
    "engine/audit_ledger.py",
    "engine/audit_reexec.py",
    "engine/audit_replay.py",
    "engine/audit_seed.py",
    "engine/book.py",
    "engine/exchange.py",
    "engine/handlers.py",
    "engine/jsondecode.py",
    "engine/trading.py",
    "projections/base.py",
    "projections/balances.py",
    "projections/book.py",
    "projections/candles.py",
    "projections/event_index.py",
    "projections/fills.py",
    "projections/ledger.py",
    "projections/markets.py",
    "projections/notifications.py",
    "projections/outcomes.py",
    "projections/orders.py",
    "projections/ticker.py",
    "projections/trades.py",
    "projections/users.py",
    "projections/withdrawals.py",
]


def ext_modules() -> list[object]:
    flag = os.environ.get("SPOTEX_MYPYC", "0")
    if flag not in ("0", "1"):
        raise SystemExit(f"SPOTEX_MYPYC={flag!r}: expected 0 (pure Python, the default) or 1 (compiled)")
    if flag == "0":
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3", debug_level="0"))


compiled = ext_modules()
# A compiled build keeps its own build directory: a pure build of the same tree must never pack
# the extensions a compiled one left in build/lib.
setup(ext_modules=compiled, options={"build": {"build_base": "build/mypyc"}} if compiled else {})
