"""Test-side helpers for the TTFT autoscaling policy (``dfast_serve/serve/autoscaling.py``): the
policy called as a function, and a deployment's ``autoscaling_config`` with the policy wired in and
the streaming-friendly defaults the module's docstring explains (``serve_config.cluster.yaml``
writes the same out)."""

from __future__ import annotations

from typing import Any, Optional

from dfast_serve.serve.autoscaling import POLICY_PATH, TTFTAutoscalingPolicyConfig, TTFTPolicy


def ttft_policy(ctx: Any, **policy_kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Function form of :class:`TTFTPolicy`, for calling it directly.

    Serve calls a *function* policy as ``fn(ctx)`` without ``policy_kwargs``, so naming this
    in ``policy_function`` would run the defaults; use :data:`POLICY_PATH` (the class) there.
    """
    return TTFTPolicy(**policy_kwargs)(ctx)


def autoscaling_config_for(
    cfg: TTFTAutoscalingPolicyConfig,
    min_replicas: int = 1,
    max_replicas: int = 4,
    upscale_delay_s: float = 3.0,
    downscale_delay_s: float = 120.0,
    *,
    look_back_period_s: float = 15.0,
    metrics_interval_s: Optional[float] = None,
) -> dict[str, Any]:
    """A deployment's ``autoscaling_config`` dict with the TTFT policy wired in.

    ``min_replicas`` must be >= 1 (this policy never asks for 0). ``metrics_interval_s`` (how
    often replicas and handles push metrics; Serve's default 10 s) is left to Serve unless
    given: tests that must see a scale-up within seconds pass e.g. 0.5 (Serve then emits a
    DeprecationWarning; in 2.60 it is still the knob that sets the push period) together with
    a ``look_back_period_s`` above it.
    """
    if min_replicas < 1:
        raise ValueError("the TTFT policy does not scale to zero: min_replicas must be >= 1")
    if max_replicas < min_replicas:
        raise ValueError(f"max_replicas ({max_replicas}) < min_replicas ({min_replicas})")
    if metrics_interval_s is not None and look_back_period_s <= metrics_interval_s:
        raise ValueError("look_back_period_s must exceed metrics_interval_s")
    config: dict[str, Any] = {
        "min_replicas": int(min_replicas),
        "max_replicas": int(max_replicas),
        "target_ongoing_requests": cfg.target_ongoing_requests_per_replica,
        "upscale_delay_s": float(upscale_delay_s),
        "downscale_delay_s": float(downscale_delay_s),
        "look_back_period_s": float(look_back_period_s),
        "policy": {"policy_function": POLICY_PATH, "policy_kwargs": cfg.model_dump()},
    }
    if metrics_interval_s is not None:
        config["metrics_interval_s"] = float(metrics_interval_s)
    return config
