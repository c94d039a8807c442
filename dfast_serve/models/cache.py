"""Where prepared checkpoints live on a node (torch-free: the vLLM environment reads it too)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("DFASTLLM_CACHE_DIR", Path.home() / ".cache" / "dfast_serve"))


def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted to safetensors by ``models/embedded.prepare_smollm2``."""
    return cache_dir() / "smollm2-135m-instruct-bf16"
