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
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def lint_with_extra_import(tmp_path: Path, module: str, statement: str) -> subprocess.CompletedProcess:
    """The contracts over a copy of the package where ``module`` (a path under it) has one more import."""
    import shutil

    package = tmp_path / "dfast_serve"
    shutil.copytree(ROOT / "dfast_serve", package, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    changed = package / module
    changed.write_text(changed.read_text() + f"\n{statement}  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return lint_imports(tmp_path)


def test_an_upward_import_breaks_the_contract(tmp_path):
    """One upward import (models -> config) fails the contracts."""
    result = lint_with_extra_import(tmp_path, "models/tokenizing.py", "from dfast_serve.config import ServerConfig")
    assert result.returncode != 0
    assert "dfast_serve.models.tokenizing -> dfast_serve.config" in result.stdout


def test_the_vllm_replica_importing_model_code_breaks_the_contract(tmp_path):
    """The vLLM replica runs in vLLM's environment (another transformers): reaching the model adapters, even
    through a chain, fails the contracts."""
    result = lint_with_extra_import(tmp_path, "serve/vllm_replica.py", "from dfast_serve.models import adapters")
    assert result.returncode != 0
    assert "dfast_serve.serve.vllm_replica -> dfast_serve.models.adapters" in result.stdout
