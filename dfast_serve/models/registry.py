"""Load the model a ``ModelConfig`` names (the one entry point deployments and the CLI use)."""

from __future__ import annotations

import torch

from dfast_serve.config import ModelConfig
from dfast_serve.models.adapters import CausalLM, DiffusionLM, load_causal_lm, load_hub_diffusion
from dfast_serve.models.embedded import load_smollm2, load_tiny_mdlm
from dfast_serve.models.native import load_native_diffusion


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def load_model(cfg: ModelConfig) -> DiffusionLM | CausalLM:
    device = resolve_device(cfg.device)
    on_gpu = device == "cuda"
    if cfg.source == "embedded":
        if cfg.engine == "diffusion":
            dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
            return load_tiny_mdlm(cfg.name, device=device, dtype=dtype)
        dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16"
        return load_smollm2(cfg.name, device=device, dtype=dtype)
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
    assert cfg.path is not None  # checked by ModelConfig
    if cfg.source in ("llada", "dream"):
        return load_native_diffusion(cfg.path, cfg.source, cfg.name, device=device, dtype=dtype)
    if cfg.source in ("llada-remote", "dream-remote"):
        kind = "llada" if cfg.source == "llada-remote" else "dream"
        return load_hub_diffusion(cfg.path, kind, cfg.name, device=device, dtype=dtype)
    return load_causal_lm(cfg.path, cfg.name, device=device, dtype=dtype)
