"""Load the model a ``ModelConfig`` names (the one entry point deployments and the CLI use)."""

from __future__ import annotations

import torch

from dfast_serve.config import ModelConfig
from dfast_serve.models.adapters import CausalLM, DiffusionLM, load_causal_lm, load_hub_diffusion
from dfast_serve.models.diffusion_gemma import DiffusionGemmaLM, load_diffusion_gemma
from dfast_serve.models.embedded import load_smollm2, load_tiny_mdlm
from dfast_serve.models.native import load_native_diffusion


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_dtype(requested: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU, float32 on a CPU, for every model.

    On CPU, torch's bf16 kernels lose to fp32 for a small model's one-token decode pass (SmolLM2-135M:
    decode step 1.9x slower in bf16, prefill 1.3x faster on an AMX CPU; ``benchmarks/ar_cpu.py``). A GPU has native
    bf16 and memory to save; every dtype batches (``replica.batch_invariance``).
    """
    if requested != "auto":
        return requested
    return "bfloat16" if device == "cuda" else "float32"


def load_model(cfg: ModelConfig) -> DiffusionLM | DiffusionGemmaLM | CausalLM:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.source == "embedded":
        if cfg.engine == "diffusion":
            return load_tiny_mdlm(cfg.name, device=device, dtype=dtype)
        return load_smollm2(cfg.name, device=device, dtype=dtype)
    assert cfg.path is not None  # checked by ModelConfig
    if cfg.source in ("llada", "dream"):
        return load_native_diffusion(cfg.path, cfg.source, cfg.name, device=device, dtype=dtype)
    if cfg.source == "diffusion_gemma":
        return load_diffusion_gemma(cfg.path, cfg.name, device=device, dtype=dtype)
    if cfg.source in ("llada-remote", "dream-remote"):
        kind = "llada" if cfg.source == "llada-remote" else "dream"
        return load_hub_diffusion(cfg.path, kind, cfg.name, device=device, dtype=dtype)
    return load_causal_lm(cfg.path, cfg.name, device=device, dtype=dtype)
