"""A setting spotex cannot honour is refused by every command, before anything is opened.

Given ``SPOTEX_KURRENTDB_URI`` (named by API.md for a requests log on KurrentDB, which this
version does not build), when any ``spotex`` command starts, then it exits 2 naming the variable,
and no store or data directory has been created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spotex.cli import main
from spotex.config import ConfigError, Settings

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
