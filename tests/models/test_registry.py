"""The models layer stands alone: loading a model needs nothing above it (config, engine, API, serve)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dfast_serve.models
from dfast_serve.models.registry import load_model

ROOT = Path(__file__).resolve().parents[2]
HIGHER = ("dfast_serve.config", "dfast_serve.engine", "dfast_serve.api", "dfast_serve.serve")


def test_importing_every_models_module_loads_no_higher_layer():
    modules = [f"dfast_serve.models.{m.name}" for m in pkgutil.iter_modules(dfast_serve.models.__path__)]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({HIGHER!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_source_other_than_embedded_needs_a_path():
    with pytest.raises(ValueError, match="needs a path"):
        load_model(name="m", engine="diffusion", source="llada")


class Loaded(Exception):
    """Raised by the recording stand-in once it has seen a call (nothing can be downloaded here)."""


@pytest.mark.parametrize("source", ["llada-remote", "dream-remote", "hf"])
def test_the_pinned_revision_reaches_every_hub_download(monkeypatch, source):
    """A fake ``from_pretrained`` (the hub is unreachable here) records what the loader asks for."""
    import transformers

    calls = []

    def recording(cls, path, **kwargs):
        calls.append((cls.__name__, path, kwargs))
        if "Tokenizer" not in cls.__name__:
            raise Loaded
        return object()

    for name in ("AutoTokenizer", "AutoModel", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", classmethod(recording))
    commit = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(Loaded):
        load_model(name="m", engine="ar" if source == "hf" else "diffusion", source=source, path="org/model",
                   revision=commit)
    assert [kwargs.get("revision") for _, _, kwargs in calls] == [commit, commit], calls
