"""The one configuration tree of dfast_serve, and the one place environment variables are read.

Precedence for diffusion options, highest first:
request extension field (``"dfast": {...}`` in the body) > serve_config.yaml > ``DFASTLLM_*``
environment variables > the defaults below.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a config or request must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class UltraFastConfig(StrictModel):
    """Early streaming for diffusion models (see README, "Ultra-fast streaming")."""

    enable_instant_first_token: bool = Field(True, description="Reveal leading tokens after the first forward pass(es).")
    first_token_steps: int = Field(1, ge=1, le=64, description="Forward passes before the first reveal.")
    first_token_confidence_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Leading tokens above this confidence are revealed at the first reveal."
    )
    stream_confidence_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="At each step, leading tokens above this confidence are committed at once."
    )
    stream_every_n_tokens: int = Field(
        4, ge=0, description="Fallback: after this many tokens are decided without the visible prefix moving, "
        "the leading token is committed. 0 disables."
    )
    min_steps: int = Field(8, ge=1, description="Lower bound of the step budget; no early stop before it.")
    max_steps: int = Field(32, ge=1, description="Upper bound of the step budget (forward passes).")
    early_stop_confidence: float = Field(
        0.95, ge=0.0, le=1.0, description="Mean confidence of undecided tokens that ends generation in one go."
    )
    early_stop_min_progress: float = Field(0.5, ge=0.0, le=1.0, description="Share decided before early stop may fire.")
    enable_early_stop: bool = Field(True, description="Switch early stop off entirely.")
    schedule: Literal["front_loaded", "uniform"] = Field(
        "front_loaded", description="How each block's step budget is spent: small steps first, or evenly."
    )

    @model_validator(mode="after")
    def _steps_in_order(self) -> "UltraFastConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        return self


class DiffusionOptions(StrictModel):
    """Per-request diffusion knobs; the ``dfast`` extension object of a request body."""

    steps: int | None = Field(None, ge=1, le=4096, description="Denoising steps; default: one per token.")
    block_length: int = Field(32, ge=1, le=4096, description="Semi-autoregressive block size in tokens.")
    remasking: Literal["low_confidence", "random"] = Field("low_confidence", description="Which tokens to commit.")
    ultra_fast: bool = Field(True, description="Use the ultra-fast streaming scheduler.")
    ultra_fast_config: UltraFastConfig = Field(default_factory=UltraFastConfig)


ENV_PREFIX = "DFASTLLM_"


def _env_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean (use true/false)")


def diffusion_env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Diffusion options set by environment variables, as a partial ``DiffusionOptions`` dict."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    ultra: dict[str, Any] = {}
    if (v := env.get(ENV_PREFIX + "ULTRA_FAST_STREAMING")) is not None:
        out["ultra_fast"] = _env_bool(v, ENV_PREFIX + "ULTRA_FAST_STREAMING")
    if (v := env.get(ENV_PREFIX + "INSTANT_FIRST_TOKEN")) is not None:
        ultra["enable_instant_first_token"] = _env_bool(v, ENV_PREFIX + "INSTANT_FIRST_TOKEN")
    if (v := env.get(ENV_PREFIX + "STREAM_CONFIDENCE_THRESHOLD")) is not None:
        ultra["stream_confidence_threshold"] = float(v)
    if (v := env.get(ENV_PREFIX + "EARLY_STOP_CONFIDENCE")) is not None:
        ultra["early_stop_confidence"] = float(v)
    if ultra:
        out["ultra_fast_config"] = ultra
    return out


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_diffusion_options(
    configured: Mapping[str, Any] | None = None,
    request: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DiffusionOptions:
    """Defaults < environment < serve_config.yaml (``configured``) < request; validated as a whole."""
    layered = deep_merge(diffusion_env_overrides(environ), configured or {})
    return DiffusionOptions.model_validate(deep_merge(layered, request or {}))


class ModelConfig(StrictModel):
    """One served model. ``source`` says how its weights load:

    * ``embedded``: the built-in default for its engine (tiny-mdlm / SmolLM2-135M), no hub access;
    * ``llada`` / ``dream``: a LLaDA or Dream checkpoint (directory or hub id in ``path``, remote code);
    * ``hf``: any Hugging Face causal LM (``path``), AR engine only.
    """

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$")
    engine: Literal["diffusion", "ar"]
    source: Literal["embedded", "llada", "dream", "hf"] = "embedded"
    path: str | None = None
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the replica has a GPU.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on GPU; float32 for tiny-mdlm and bfloat16 for SmolLM2 on CPU."
    )

    @model_validator(mode="after")
    def _source_fits_engine(self) -> "ModelConfig":
        if self.source in ("llada", "dream") and self.engine != "diffusion":
            raise ValueError(f"source {self.source!r} is a diffusion model; set engine: diffusion")
        if self.source == "hf" and self.engine != "ar":
            raise ValueError("source 'hf' loads causal LMs; set engine: ar")
        if self.source != "embedded" and not self.path:
            raise ValueError(f"source {self.source!r} needs a path (checkpoint directory or hub id)")
        return self
