"""A regular (not editable) install of the package can migrate: the SQL files travel with it.

Given a wheel built from this checkout, when it is installed into a fresh virtualenv (its
dependencies borrowed from the project's own environment), then ``projections.migrate`` of
that install finds every migration, under ``<prefix>/share/spotex/migrations``, with the
checkout's bytes — not beside a source tree the install does not have.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
sys.path.append(sys.argv[1])  # the dependencies, from the project's environment (no .pth run)
import projections.migrate as m
print(json.dumps({"module": m.__file__, "dir": str(m.MIGRATIONS),
                  "files": {d: [str(p) for _, p in m.migration_files(d)] for d in ("sqlite", "postgres")}}))
"""


def test_an_installed_wheel_finds_its_migrations(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(ROOT), "--no-deps", "-w", str(wheels)], check=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    (wheel,) = wheels.glob("spotex-*.whl")
    # --ignore-installed: with --prefix alone pip uninstalls the running environment's spotex first
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--ignore-installed", "--prefix", str(venv),
                    str(wheel)], check=True)
    out = subprocess.run([str(python), "-c", PROBE, sysconfig.get_paths()["purelib"]], check=True,
                         capture_output=True, text=True, cwd=tmp_path).stdout
    found = json.loads(out)
    assert found["module"].startswith(target), found["module"]  # the installed copy, not the checkout
    assert Path(found["dir"]) == venv / "share" / "spotex" / "migrations"
    for dialect in ("sqlite", "postgres"):
        want = sorted(ROOT.glob(f"migrations/*.{dialect}.sql"))
        got = [Path(p) for p in found["files"][dialect]]
        assert [p.name for p in got] == [p.name for p in want] and want
        assert [p.read_bytes() for p in got] == [p.read_bytes() for p in want]
