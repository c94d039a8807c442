"""Diffusion options resolve in one place, ``resolve_diffusion_options``, highest first: request
extension field (``"dfast": {...}`` in the body) > serve_config.yaml (the model's ``diffusion``
section, then the server-wide ``ultra_fast`` switches) > ``DFASTLLM_*`` environment variables > the
defaults of ``DiffusionOptions``."""

from __future__ import annotations

import os
from typing import Any, Mapping

from pydantic import Field

from dfast_serve.wire.options import DiffusionOptions, StrictModel

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
    switches: dict[str, Any] = {}
    for field, name in (("enable_ultra_fast_streaming", "ULTRA_FAST_STREAMING"),
                        ("instant_first_token", "INSTANT_FIRST_TOKEN")):
        if (v := env.get(ENV_PREFIX + name)) is not None:
            switches[field] = _env_bool(v, ENV_PREFIX + name)
    for field, name in (("stream_confidence_threshold", "STREAM_CONFIDENCE_THRESHOLD"),
                        ("early_stop_confidence", "EARLY_STOP_CONFIDENCE")):
        if (v := env.get(ENV_PREFIX + name)) is not None:
            switches[field] = float(v)
    return UltraFastSwitches.model_validate(switches).as_overrides()


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
    strict: bool = False,
) -> DiffusionOptions:
    """Defaults < environment < serve_config.yaml (``configured``) < request; validated as a whole."""
    layered = deep_merge(diffusion_env_overrides(environ), configured or {})
    return DiffusionOptions.model_validate(deep_merge(layered, request or {}), strict=strict)


class UltraFastSwitches(StrictModel):
    """Server-wide ultra-fast switches (serve_config.yaml ``ultra_fast:`` / ``DFASTLLM_*`` env vars).

    Each one left unset (None) defers to the layer below it.
    """

    enable_ultra_fast_streaming: bool | None = None
    """DFASTLLM_ULTRA_FAST_STREAMING"""
    instant_first_token: bool | None = None
    """DFASTLLM_INSTANT_FIRST_TOKEN"""
    stream_confidence_threshold: float | None = Field(None, ge=0.0, le=1.0)
    """DFASTLLM_STREAM_CONFIDENCE_THRESHOLD"""
    early_stop_confidence: float | None = Field(None, ge=0.0, le=1.0)
    """DFASTLLM_EARLY_STOP_CONFIDENCE"""

    def as_overrides(self) -> dict[str, Any]:
        """These switches as a partial ``DiffusionOptions`` dict."""
        out: dict[str, Any] = {}
        ultra: dict[str, Any] = {}
        if self.enable_ultra_fast_streaming is not None:
            out["ultra_fast"] = self.enable_ultra_fast_streaming
        if self.instant_first_token is not None:
            ultra["enable_instant_first_token"] = self.instant_first_token
        if self.stream_confidence_threshold is not None:
            ultra["stream_confidence_threshold"] = self.stream_confidence_threshold
        if self.early_stop_confidence is not None:
            ultra["early_stop_confidence"] = self.early_stop_confidence
        if ultra:
            out["ultra_fast_config"] = ultra
        return out
