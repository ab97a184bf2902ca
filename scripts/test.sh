#!/usr/bin/env bash
# The one test command: bootstrap the virtualenv, make the services available, lint, run pytest.
#
#   scripts/test.sh [pytest args...]
#
# 1. creates .venv with `python3 -m venv` if it is missing, and runs `pip install -e '.[dev]'`
#    whenever pyproject.toml differs from the one last installed (a stamp inside .venv);
# 2. runs scripts/services.sh (PostgreSQL, Redis, RabbitMQ on 127.0.0.1);
# 3. runs `ruff check .`;
# 4. runs `python -m pytest` with the arguments given; a failure ends the run with its code,
#    and "no tests collected" (pytest's 5) is a failure here: a test run that ran nothing passed
#    nothing;
# 5. then, on a full run (no arguments; SPOTEX_TEST_COMPILED=1 forces it, =0 skips it), tests the
#    compiled build — the one production and the audit figures run on (setup.py, docs/audit.md):
#    builds the wheel with SPOTEX_MYPYC=1 and installs it into .venv-mypyc (again only when
#    pyproject.toml, setup.py or a source file of the package changed: a stamp of their hashes),
#    and runs COMPILED_TESTS there with SPOTEX_EXPECT_COMPILED=1, `python -P` so that the checkout
#    does not shadow the installed package (tests/unit/test_compiled_build.py checks it did not).
#    Exits with the first failing code, with the same rule for 5.
#
# Defaults (kept if already set): SPOTEX_TEST_DATABASE_URL, SPOTEX_TEST_BROKER_URL,
# SPOTEX_TEST_REDIS_URL. SPOTEX_SLOW=1 also runs the tests marked `slow`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*" >&2; }

# --- virtualenv --------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.spotex-installed-pyproject.sha256
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    say "installing the project and its dev dependencies into .venv (pyproject.toml changed)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    echo "$wanted" >"$stamp"
fi
export VIRTUAL_ENV="$PWD/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"

# --- services ----------------------------------------------------------------------------------
scripts/services.sh

export SPOTEX_TEST_DATABASE_URL="${SPOTEX_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/spotex_test}"
export SPOTEX_TEST_BROKER_URL="${SPOTEX_TEST_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export SPOTEX_TEST_REDIS_URL="${SPOTEX_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"

# --- lint --------------------------------------------------------------------------------------
say "ruff check ."
ruff check .

# --- tests -------------------------------------------------------------------------------------
run_pytest() {  # python [pytest args...]: exits on failure, 5 included
    local rc=0
    "$1" "${@:2}" || rc=$?
    if [ "$rc" -eq 5 ]; then
        say "FAILED: pytest collected no tests (exit code 5); a run that tests nothing is not a pass"
        exit 1
    fi
    if [ "$rc" -ne 0 ]; then
        exit "$rc"
    fi
}
run_pytest python -m pytest "$@"

# --- the compiled build ------------------------------------------------------------------------
# The engine, domain, audit and projection tests (the modules setup.py compiles, and what drives
# them), unit and integration, SQLite and PostgreSQL. Seven projection tests replace a method of a
# compiled projection class with monkeypatch, which compiled callers do not see (mypyc calls
# through a vtable); they run in the pure stage only, skipped here (marked
# `patches_a_projection_class`): in test_projections_ops.py the torn batch
# (Projection.state_json), the failing event, parallel rebuild and stopped status (Users.apply),
# the in-memory rebuild (Keyed.flush), the duplicate key (Trades.apply); in test_serve_parts.py
# the failing event (Users.apply).
COMPILED_TESTS=(
    tests/unit
    tests/integration/test_audit_cli.py
    tests/integration/test_engine_crash.py
    tests/integration/test_engine_process.py
    tests/integration/test_engine_snapshots.py
    tests/integration/test_engine_workload.py
    tests/integration/test_projections_docs.py
    tests/integration/test_projections_locks.py
    tests/integration/test_projections_models.py
    tests/integration/test_projections_ops.py
    tests/integration/test_projections_workers.py
    tests/integration/test_serve_parts.py
)
if [ "${SPOTEX_TEST_COMPILED:-$([ $# -eq 0 ] && echo 1 || echo 0)}" = 1 ]; then
    compiled_started=$SECONDS
    cstamp=.venv-mypyc/.spotex-built.sha256
    cwanted=$(find pyproject.toml setup.py README.md _build domain engine projections api spotex migrations \
                  -type f \( -name '*.py' -o -name '*.sql' -o -name '*.toml' -o -name '*.md' \) \
                  -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [ ! -f "$cstamp" ] || [ "$(cat "$cstamp")" != "$cwanted" ]; then
        say "building the compiled wheel (SPOTEX_MYPYC=1) into .venv-mypyc (sources changed)"
        [ -x .venv-mypyc/bin/python ] || python3 -m venv .venv-mypyc
        rm -rf .venv-mypyc/wheel "$cstamp"
        # .venv has the build's requirements (setuptools, and mypy at the dev extras' pin, which
        # _build/backend.py asks an isolated compiled build for).
        SPOTEX_MYPYC=1 .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps \
            --no-build-isolation -w .venv-mypyc/wheel .
        .venv-mypyc/bin/python -m pip uninstall -q -y --disable-pip-version-check spotex 2>/dev/null || true
        wheel=$(echo .venv-mypyc/wheel/spotex-*.whl)
        .venv-mypyc/bin/python -m pip install -q --disable-pip-version-check "$wheel[dev]"
        echo "$cwanted" >"$cstamp"
        say "compiled wheel built and installed in $((SECONDS - compiled_started)) s"
    fi
    # Tests import their helpers as `tests.…`; `-P` leaves the checkout off sys.path, so a
    # directory holding only a link to tests/ goes on PYTHONPATH (the packages stay the wheel's).
    mkdir -p .venv-mypyc/tests-path
    ln -sfn "$PWD/tests" .venv-mypyc/tests-path/tests
    say "the compiled build: ${COMPILED_TESTS[*]}"
    VIRTUAL_ENV="$PWD/.venv-mypyc" PATH="$PWD/.venv-mypyc/bin:$PATH" SPOTEX_EXPECT_COMPILED=1 \
        PYTHONPATH="$PWD/.venv-mypyc/tests-path" \
        run_pytest .venv-mypyc/bin/python -P -m pytest "${COMPILED_TESTS[@]}"
    say "the compiled build's stage took $((SECONDS - compiled_started)) s"
fi
exit 0
