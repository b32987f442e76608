"""The packages' one-way layering and the absence of import cycles, checked with import-linter.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs
them on the tree, and once more on a copy with one deliberate wrong arrow
(crypto importing the Flower apps) to show the check really bites.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["crypto", "models", "recdata", "schemas", "twoserver", "clients", "strategies", "simulations",
            "benchmarks"]


def _lint(folder: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=folder, capture_output=True, text=True,
                          env={"PYTHONPATH": str(folder), "PATH": ""}, timeout=300)


def test_layers_hold_and_no_package_has_an_import_cycle():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_wrong_import_is_caught(tmp_path):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("*.csv", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "crypto" / "fixed_point.py"
    target.write_text(target.read_text() + "\nimport simulations.run  # a wrong arrow: crypto -> simulations\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "crypto.fixed_point -> simulations.run" in result.stdout
