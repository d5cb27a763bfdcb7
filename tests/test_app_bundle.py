"""The Flower App Bundle (FAB) that ``flwr run`` builds from this checkout: the package and nothing
else, well under Flower's size limit.

A FAB over ``FAB_MAX_SIZE`` makes every ``flwr run`` fail before a run exists (committed benchmark
runs under docs/ once pushed it past 10 MB and every end-to-end test failed at once); this test
names the cause in seconds instead.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from flwr.cli.build import FAB_MAX_SIZE

from clipfed.cli import app_dir
from clipfed.engines.launch import _bin


def test_the_fab_holds_the_package_only_and_fits_flowers_limit(tmp_path: Path) -> None:
    built = subprocess.run([_bin("flwr"), "build", "--app", str(app_dir())], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert fab.stat().st_size < FAB_MAX_SIZE / 4, f"{fab.stat().st_size} bytes: what grew the FAB?"
    with zipfile.ZipFile(fab) as bundle:
        names = set(bundle.namelist())
    package = {str(p.relative_to(app_dir())) for p in (app_dir() / "clipfed").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert names - {".info/CONTENT"} == package | {"pyproject.toml"}
