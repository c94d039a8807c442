"""``engine: vllm``: an AR model served by vLLM's async engine inside the model replica.

vLLM pins torch and transformers to versions the main environment cannot hold (DiffusionGemma needs
transformers 5.24), so its replicas run another interpreter: ``python``, a virtualenv built by
``scripts/setup_vllm.sh`` with the same Ray version (Serve starts them with
``runtime_env.py_executable``). These fields are vLLM's engine arguments; each is validated here, so a
typo or an impossible value fails at start, not in a replica's log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from dfast_serve.config.diffusion import ENV_PREFIX
from dfast_serve.wire.options import StrictModel

VLLM_PYTHON_ENV = f"{ENV_PREFIX}VLLM_PYTHON"
REPO_VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
VLLM_SETUP = "scripts/setup_vllm.sh"


class VLLMOptions(StrictModel):
    """vLLM's engine arguments for one model (docs/configuration.md, "engine: vllm")."""

    python: str | None = None
    """The vLLM environment's interpreter, the same path on every node that runs this model's replicas. None:
    $DFASTLLM_VLLM_PYTHON, else .venv-vllm/bin/python beside this source tree (what scripts/setup_vllm.sh builds).
    """
    max_model_len: int | None = Field(None, ge=16, le=10_000_000)
    """Context length (prompt + answer) the engine allocates for; None: the model's own."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Share of the GPU's memory vLLM may take (weights, activations, KV cache)."""
    cpu_kv_cache_space_gib: int = Field(1, ge=1, le=4096)
    """CPU replicas (num_gpus 0): the KV cache's size in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE)."""
    quantization: Literal["fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "bitsandbytes",
                          "compressed-tensors", "modelopt"] | None = None
    """Quantized checkpoints; None: what the checkpoint's config says (or none)."""
    tensor_parallel_size: int = Field(1, ge=1, le=16)
    """GPUs one replica shards the model over; the replica must reserve as many (replica.num_gpus)."""
    enable_prefix_caching: bool | None = None
    """Reuse the KV cache of a shared prompt prefix across requests; None: vLLM's default (on)."""
    max_num_batched_tokens: int | None = Field(None, ge=16, le=10_000_000)
    """Tokens one engine step computes, decodes plus prefill chunks (chunked prefill); None: vLLM's default."""
    enforce_eager: bool = False
    """No CUDA graphs / compilation: starts in seconds instead of minutes, decodes slower. On for the CPU tests."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """The engine's seed (a request's own seed still wins)."""

    def interpreter(self, environ: dict[str, str] | None = None) -> str:
        """The interpreter the replicas run (``python``, else the environment variable, else the repo's venv)."""
        env = os.environ if environ is None else environ
        return self.python or env.get(VLLM_PYTHON_ENV) or str(REPO_VLLM_PYTHON)

    def engine_args(self, model_path: str, served_name: str, dtype: str, revision: str | None,
                    max_num_seqs: int) -> dict[str, Any]:
        """Keyword arguments for ``vllm.AsyncEngineArgs``."""
        args: dict[str, Any] = {
            "model": model_path, "served_model_name": [served_name], "dtype": dtype, "revision": revision,
            "max_model_len": self.max_model_len, "gpu_memory_utilization": self.gpu_memory_utilization,
            "quantization": self.quantization, "tensor_parallel_size": self.tensor_parallel_size,
            "max_num_seqs": max_num_seqs, "enforce_eager": self.enforce_eager, "seed": self.seed,
        }
        if self.enable_prefix_caching is not None:
            args["enable_prefix_caching"] = self.enable_prefix_caching
        if self.max_num_batched_tokens is not None:
            args["max_num_batched_tokens"] = self.max_num_batched_tokens
        return args
