#!/usr/bin/env bash
# The one test command: bootstrap the virtualenv, make the services available, lint, run pytest.
#
#   scripts/test.sh [pytest args...]
#
# 1. creates .venv with `python3 -m venv` if it is missing, and runs `pip install -e '.[dev]'`
#    whenever pyproject.toml differs from the one last installed (a stamp inside .venv);
# 2. runs scripts/services.sh (PostgreSQL, Redis, RabbitMQ on 127.0.0.1);
# 3. runs `ruff check .`;
# 4. runs `python -m pytest` with the arguments given, and exits with its code, except that
#    "no tests collected" (pytest's 5) is a failure here: a test run that ran nothing passed nothing.
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
rc=0
python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    say "FAILED: pytest collected no tests (exit code 5); a run that tests nothing is not a pass"
    exit 1
fi
exit "$rc"
