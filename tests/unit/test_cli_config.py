"""A setting spotex cannot honour is refused by every command, before anything is opened.

Given ``SPOTEX_KURRENTDB_URI`` (named by API.md for a requests log on KurrentDB, which this
version does not build), when any ``spotex`` command starts, then it exits 2 naming the variable,
and no store or data directory has been created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spotex.cli import main
from spotex.config import ConfigError, Settings, Tuning

COMMANDS = [
    ["serve"], ["migrate"], ["engine"], ["api"], ["worker"], ["projections", "status"],
    ["audit"], ["replay", "--at", "1"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_every_command_refuses_a_kurrentdb_uri_and_creates_nothing(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("SPOTEX_DATA_DIR", str(data))
    monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
    monkeypatch.setenv("SPOTEX_KURRENTDB_URI", "esdb://127.0.0.1:2113?Tls=false")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"spotex {argv[0]}: SPOTEX_KURRENTDB_URI is set" in err and "unset" in err
    assert not data.exists()


def test_without_it_the_settings_read_as_before() -> None:
    assert Settings.from_env({"SPOTEX_KURRENTDB_URI": ""}).backend == "sqlite"  # empty is unset
    with pytest.raises(ConfigError, match="SPOTEX_KURRENTDB_URI"):
        Settings.from_env({"SPOTEX_KURRENTDB_URI": "esdb://localhost:2113"})


# -- the tuning variables: read and checked with the settings, by every command ----------------

BAD_TUNING = [
    ("SPOTEX_ENGINE_BATCH_SIZE", "0"), ("SPOTEX_ENGINE_BATCH_SIZE", "many"),
    ("SPOTEX_ENGINE_SNAPSHOT_EVERY", "-5"), ("SPOTEX_ENGINE_CHECK_INVARIANTS", "yes"),
    ("SPOTEX_WAIT_LIMIT", "ten"), ("SPOTEX_WAIT_LIMIT", "-1"), ("SPOTEX_WAIT_LIMIT", "nan"),
    ("SPOTEX_WS_POLL", "0"), ("SPOTEX_WS_POLL", "inf"), ("SPOTEX_WS_MAX_QUEUE", "1e3"),
    ("SPOTEX_WS_MAX_QUEUE_BYTES", "8MiB"), ("SPOTEX_WS_SEND_BUFFER", "-1"), ("SPOTEX_WS_DIRECT", "off"),
    ("SPOTEX_WORKER_THREADS", "four"), ("SPOTEX_WORKER_SCHEDULER", "true"),
    ("SPOTEX_REBUILD_PROCESSES", "two"), ("SPOTEX_REDIS_URL", "127.0.0.1:6379"),
    ("SPOTEX_WEBHOOK_MIN_BACKOFF", "1s"), ("SPOTEX_WEBHOOK_MAX_BACKOFF", "0"),
    ("SPOTEX_WEBHOOK_GIVE_UP_AFTER", "-3"), ("SPOTEX_WEBHOOK_TIMEOUT", "inf"),
    ("SPOTEX_WEBHOOK_ALLOW_PRIVATE", "yes"),
]


@pytest.mark.parametrize(("name", "value"), BAD_TUNING, ids=lambda v: str(v))
def test_a_malformed_tuning_variable_is_refused_at_start_naming_it(
    name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given one malformed tuning variable, when a command starts, then it exits 2 naming the
    variable and its value — not a traceback later (at the first WebSocket, say) — and nothing
    has been created."""
    data = tmp_path / "data"
    monkeypatch.setenv("SPOTEX_DATA_DIR", str(data))
    monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
    monkeypatch.setenv(name, value)
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spotex migrate: {name} must be ") and repr(value) in err
    assert not data.exists()
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_tuning_reads_its_values_and_defaults_when_unset_or_empty() -> None:
    default = Settings.from_env({}).tuning
    assert default == Tuning() == Settings.from_env({name: "" for name, _ in BAD_TUNING}).tuning
    got = (default.engine_batch_size, default.wait_limit, default.ws_direct, default.rebuild_processes,
           default.projection_queue, default.redis_url)
    assert got == (1000, 10.0, True, None, "spotex_projections", None)
    t = Settings.from_env({
        "SPOTEX_ENGINE_BATCH_SIZE": "25", "SPOTEX_ENGINE_SNAPSHOT_EVERY": "300",
        "SPOTEX_ENGINE_CHECK_INVARIANTS": "1", "SPOTEX_WAIT_LIMIT": "0", "SPOTEX_WS_POLL": "0.5",
        "SPOTEX_WS_MAX_QUEUE": "50", "SPOTEX_WS_MAX_QUEUE_BYTES": "20000", "SPOTEX_WS_SEND_BUFFER": "0",
        "SPOTEX_WS_DIRECT": "0", "SPOTEX_WORKER_THREADS": "2", "SPOTEX_WORKER_SCHEDULER": "0",
        "SPOTEX_PROJECTION_QUEUE": "q2", "SPOTEX_REBUILD_PROCESSES": "3",
        "SPOTEX_REDIS_URL": "redis://127.0.0.1:6379/1",
    }).tuning
    assert t == Tuning(engine_batch_size=25, engine_snapshot_every=300, engine_check_invariants=True,
                       wait_limit=0.0, ws_poll=0.5, ws_max_queue=50, ws_max_queue_bytes=20000,
                       ws_send_buffer=0, ws_direct=False, worker_threads=2, worker_scheduler=False,
                       projection_queue="q2", rebuild_processes=3, redis_url="redis://127.0.0.1:6379/1")


def test_the_webhook_sender_takes_its_tuning_or_its_defaults() -> None:
    from projections.webhooks import WebhookConfig

    assert WebhookConfig.from_tuning(Tuning()) == WebhookConfig()
    assert WebhookConfig.from_tuning(Tuning(), production=True).allow_private is False
    t = Settings.from_env({"SPOTEX_WEBHOOK_MIN_BACKOFF": "0.5", "SPOTEX_WEBHOOK_MAX_BACKOFF": "60",
                           "SPOTEX_WEBHOOK_GIVE_UP_AFTER": "3600", "SPOTEX_WEBHOOK_TIMEOUT": "2",
                           "SPOTEX_WEBHOOK_ALLOW_PRIVATE": "1"}).tuning
    assert WebhookConfig.from_tuning(t, production=True) == WebhookConfig(
        min_backoff=0.5, max_backoff=60.0, give_up_after=3600.0, timeout=2.0, allow_private=True)


def test_every_tuning_variable_is_in_the_operations_doc() -> None:
    import inspect
    import re

    names = set(re.findall(r'"(SPOTEX_[A-Z_]+)"', inspect.getsource(Tuning.from_env)))
    assert len(names) >= 19 and {name for name, _ in BAD_TUNING} <= names
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    assert [name for name in sorted(names) if f"`{name}`" not in doc] == []


@pytest.mark.parametrize("value", ["garbage", "user=0/s", "user=50/s,ip=x"])
def test_malformed_rate_limits_are_refused_at_start(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``SPOTEX_RATE_LIMITS`` was read only when the api's limiter was built: ``spotex serve``
    had created its data directory and died with a traceback. Now every command refuses it."""
    data = tmp_path / "data"
    monkeypatch.setenv("SPOTEX_DATA_DIR", str(data))
    monkeypatch.delenv("SPOTEX_DATABASE_URL", raising=False)
    monkeypatch.setenv("SPOTEX_RATE_LIMITS", value)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.startswith("spotex serve: SPOTEX_RATE_LIMITS: ")
    assert not data.exists()
    assert Settings.from_env({"SPOTEX_RATE_LIMITS": "off"}).rate_limits == "off"
    assert Settings.from_env({"SPOTEX_RATE_LIMITS": "user=5/m"}).rate_limits == "user=5/m"
