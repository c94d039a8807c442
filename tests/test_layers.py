"""The layer rules of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")  # import-linter's command, in this venv


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """The contracts of ``root``/pyproject.toml over the package under ``root``."""
    return subprocess.run([LINT_IMPORTS, "--config", "pyproject.toml", "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_every_import_points_down_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same contracts over a copy of the package with one upward import (models -> config) fail."""
    import shutil

    package = tmp_path / "dfast_serve"
    shutil.copytree(ROOT / "dfast_serve", package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    upward = package / "models" / "tokenizing.py"
    upward.write_text(upward.read_text() + "\nfrom dfast_serve.config import ServerConfig  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "dfast_serve.models.tokenizing -> dfast_serve.config" in result.stdout
