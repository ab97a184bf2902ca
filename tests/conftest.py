"""Fixtures and settings shared by every test: hypothesis profiles, the slow opt-in, real services.

- Hypothesis profiles: ``default`` (100 examples, no deadline: CI machines are small and shared;
  derandomized when ``CI`` is set so that a submission's CI run is reproducible) and ``long``
  (2,000 examples), chosen by ``SPOTEX_HYPOTHESIS_PROFILE``.
- Tests marked ``slow`` are skipped unless ``SPOTEX_SLOW=1``.
- ``postgres_url``: a fresh, empty database per test module on the real server named by
  ``SPOTEX_TEST_DATABASE_URL``, dropped afterwards. Integration tests use the real servers, never
  mocks, and CI always has them: an unreachable server FAILS the test, it never skips it.
  ``redis_url`` and ``broker_url`` check their servers the same way.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg import sql

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/spotex_test"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_DB_PREFIX = "spotex_t_"
HOW_TO_START = "start the services with scripts/services.sh (scripts/test.sh does it for you)"

# --- hypothesis --------------------------------------------------------------------------------

settings.register_profile(
    "default",
    max_examples=100,
    deadline=None,
    print_blob=True,
    derandomize=bool(os.environ.get("CI")),
)
settings.register_profile(
    "long",
    max_examples=2_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
_profile = os.environ.get("SPOTEX_HYPOTHESIS_PROFILE", "default")
if _profile not in ("default", "long"):
    raise pytest.UsageError(f"SPOTEX_HYPOTHESIS_PROFILE={_profile!r}: expected 'default' or 'long'")
settings.load_profile(_profile)

# --- slow tests --------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SPOTEX_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set SPOTEX_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> list[str]:
    slow = "on" if os.environ.get("SPOTEX_SLOW") == "1" else "off (SPOTEX_SLOW=1 to run them)"
    return [f"spotex: hypothesis profile {_profile}, slow tests {slow}"]


# --- PostgreSQL --------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _connect_admin(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the server of ``url``, or a failed test saying why."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        error = exc
    pytest.fail(
        f"PostgreSQL at {_redact(url)} is unreachable ({error}). Integration tests need the real "
        f"server; {HOW_TO_START}, or point SPOTEX_TEST_DATABASE_URL at one.",
        pytrace=False,
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _run_is_gone(name: str) -> bool:
    """Whether the test run that created database ``name`` (its pid is in the name) has exited."""
    try:
        pid = int(name[len(TEST_DB_PREFIX) :].split("_", 1)[0])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


def _drop_stale_databases(conn: psycopg.Connection[Any]) -> None:
    """Drop test databases left by runs that were killed before their teardown."""
    rows = conn.execute(
        "select datname from pg_database where datname like %s", (TEST_DB_PREFIX + "%",)
    ).fetchall()
    for (name,) in rows:
        if _run_is_gone(name):
            with suppress(psycopg.Error):  # in use after all: leave it
                conn.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of the PostgreSQL server for tests (``SPOTEX_TEST_DATABASE_URL``), checked reachable."""
    url = os.environ.get("SPOTEX_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    conn = _connect_admin(url)
    try:
        _drop_stale_databases(conn)
    finally:
        conn.close()
    return url


@pytest.fixture(scope="session")
def make_postgres_database(postgres_server_url: str) -> Callable[[], AbstractContextManager[str]]:
    """A factory of fresh databases: ``with make_postgres_database() as url: ...`` creates a
    uniquely named empty database and drops it on exit. For tests that need a scope of their own."""

    @contextmanager
    def fresh() -> Iterator[str]:
        name = f"{TEST_DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        conn = _connect_admin(postgres_server_url)
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        try:
            yield _with_database(postgres_server_url, name)
        finally:
            conn = _connect_admin(postgres_server_url)
            try:
                # FORCE: a pool the test forgot to close must not keep the database alive.
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            finally:
                conn.close()

    return fresh


@pytest.fixture(scope="module")
def postgres_url(make_postgres_database: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """A fresh, empty database on the real PostgreSQL server, for one test module."""
    with make_postgres_database() as url:
        yield url


# --- Redis and RabbitMQ ------------------------------------------------------------------------


def _require_tcp(what: str, url: str, default_port: int, env: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=5):
            return
    except OSError as exc:
        error = exc
    pytest.fail(
        f"{what} at {host}:{port} is unreachable ({error}). Integration tests need the real "
        f"server; {HOW_TO_START}, or point {env} at one.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server for tests (``SPOTEX_TEST_REDIS_URL``), checked reachable."""
    url = os.environ.get("SPOTEX_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    _require_tcp("Redis", url, 6379, "SPOTEX_TEST_REDIS_URL")
    return url


@pytest.fixture(scope="session")
def broker_url() -> str:
    """URL of the real RabbitMQ broker for tests (``SPOTEX_TEST_BROKER_URL``), checked reachable."""
    url = os.environ.get("SPOTEX_TEST_BROKER_URL", DEFAULT_BROKER_URL)
    _require_tcp("RabbitMQ", url, 5672, "SPOTEX_TEST_BROKER_URL")
    return url
