"""Load a served model by its source (the one entry point deployments and the CLI use).

The arguments are the fields of the server config's ``ModelConfig``, passed as plain values (this
layer knows nothing of the config): ``load_model(**model_config.model_dump())``.
"""

from __future__ import annotations

import torch

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
    decode step 1.9x slower in bf16, prefill 1.3x faster on an AMX CPU; ``benchmarks/engine/ar_cpu.py``). A GPU has native
    bf16 and memory to save; every dtype batches (``replica.batch_invariance``).
    """
    if requested != "auto":
        return requested
    return "bfloat16" if device == "cuda" else "float32"


def load_model(name: str, engine: str, source: str = "embedded", path: str | None = None, device: str = "auto",
               dtype: str = "auto", revision: str | None = None) -> DiffusionLM | DiffusionGemmaLM | CausalLM:
    """``engine``: "diffusion" or "ar" (it picks the embedded model); ``source``: how the weights load
    (``ModelConfig``'s list); ``path``: checkpoint directory or hub id, for every source but "embedded";
    ``device`` / ``dtype``: as named, or "auto" (``resolve_device``, ``resolve_dtype``); ``revision``: the hub
    commit of a remote-code (``*-remote``) or ``hf`` checkpoint."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if source == "embedded":
        if engine == "diffusion":
            return load_tiny_mdlm(name, device=device, dtype=dtype)
        return load_smollm2(name, device=device, dtype=dtype)
    if path is None:
        raise ValueError(f"source {source!r} needs a path (checkpoint directory or hub id)")
    if source in ("llada", "dream"):
        return load_native_diffusion(path, source, name, device=device, dtype=dtype)
    if source == "diffusion_gemma":
        return load_diffusion_gemma(path, name, device=device, dtype=dtype)
    if source in ("llada-remote", "dream-remote"):
        return load_hub_diffusion(path, source.removesuffix("-remote"), name, device=device, dtype=dtype,
                                  revision=revision)
    return load_causal_lm(path, name, device=device, dtype=dtype, revision=revision)
