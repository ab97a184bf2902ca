"""A regular (not editable) install of the package can migrate: the SQL files travel with it.

Given a wheel built from this checkout, when it is installed into a fresh virtualenv (its
dependencies borrowed from the project's own environment), then ``projections.migrate`` of
that install finds every migration, under ``<prefix>/share/spotex/migrations``, with the
checkout's bytes — not beside a source tree the install does not have.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
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


def build_stage_copies() -> list[tuple[list[str], str]]:
    """The ``COPY SRC... DEST`` lines of the Dockerfile's first (build) stage."""
    stages = (ROOT / "Dockerfile").read_text().split("\nFROM ")  # [0]: the comments before the first
    copies = []
    for line in stages[1].splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words):
            copies.append((words[1:-1], words[-1]))
    return copies


def test_the_images_build_stage_copies_all_a_build_needs(tmp_path: Path) -> None:
    """No Docker daemon here: the build stage's context is rebuilt from its COPY lines and built.

    Given only what the Dockerfile's build stage copies, when a wheel is built from it (pure: the
    compiled build differs by its extensions only), then it builds — the backend, setup.py and the
    data files are all there — and holds every package the image imports.
    """
    src = tmp_path / "src"
    src.mkdir()
    copies = build_stage_copies()
    assert copies, "no COPY in the Dockerfile's build stage"
    for sources, dest in copies:
        for name in sources:
            target = src / dest / name if dest.endswith("/") else src / dest
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            else:
                shutil.copy2(ROOT / name, target)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)], check=True, cwd=tmp_path,
                   env={**os.environ, "SPOTEX_MYPYC": "0"})
    (wheel,) = wheels.glob("spotex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("domain/__init__.py", "engine/exchange.py", "projections/migrate.py",
                   "api/routers/__init__.py", "spotex/cli.py"):
        assert module in names, module
    assert any(n.endswith("share/spotex/migrations/0001_read_models.postgres.sql") for n in names)
