"""The TTFT autoscaling policy: the pure rule, and the entry point as Ray Serve 2.60 calls it.

No Ray cluster: the policy runs on Serve's real AutoscalingContext / AutoscalingConfig objects,
and through Serve's own wrapper (`_apply_autoscaling_config`) that adds delays and bounds.
"""

from __future__ import annotations

import json
import time
import warnings

import pytest
from pydantic import ValidationError
from ray.serve._private.common import DeploymentID, ReplicaID, TimeStampedValue
from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from dfast_serve.serve.autoscaling import (
    IN_FLIGHT_METRIC,
    POLICY_PATH,
    TTFT_METRIC,
    TTFTAutoscalingPolicyConfig,
    TTFTPolicy,
    desired_replicas,
)
from tests.serve.autoscaling_helpers import autoscaling_config_for, ttft_policy

CFG = TTFTAutoscalingPolicyConfig()  # target p90 1.0 s, 2 requests/replica, down below 0.5 s
DEP = DeploymentID(name="ARReplica", app_name="dfast_serve")


# ---------------------------------------------------------------- the pure rule


def test_high_ttft_scales_up():
    # 1.5 requests per replica (under the load target) but p90 TTFT 1.5 s > 1.0 s.
    assert desired_replicas(2, 1.5, 3, 0, CFG) == 3


def test_ttft_step_is_proportional_to_overshoot_and_capped():
    assert desired_replicas(4, 1.5, 6, 0, CFG) == 6  # ceil(4 * 1.5)
    assert desired_replicas(4, 9.0, 6, 0, CFG) == 8  # overshoot capped at max_ttft_upscale_factor=2


def test_queue_building_scales_up_proportionally():
    assert desired_replicas(1, 0.2, 3, 0, CFG) == 2  # just over target: +1
    assert desired_replicas(1, 0.2, 10, 6, CFG) == 5  # ceil(10 / 2)
    assert desired_replicas(2, 0.2, 21, 13, CFG) == 11
    # Requests waiting at the handles scale up even when the mean load looks fine.
    assert desired_replicas(2, 0.2, 2, 1, CFG) == 3


def test_low_ttft_and_low_load_scales_down_by_one():
    assert desired_replicas(4, 0.1, 0, 0, CFG) == 3
    assert desired_replicas(4, 0.1, 4, 0, CFG) == 3  # 4 <= 3 replicas * 2 * 0.8
    assert desired_replicas(2, 0.0, 0.5, 0, CFG) == 1


def test_high_ttft_with_low_load_does_not_scale_down():
    # Load would fit on fewer replicas, but p90 TTFT is over target: hold (and no TTFT-driven
    # upscale either, since replicas are not shared: 0.5 requests per replica).
    assert desired_replicas(3, 2.0, 1.5, 0, CFG) == 3
    # TTFT between downscale fraction and target (the hysteresis band): hold.
    assert desired_replicas(3, 0.7, 0, 0, CFG) == 3


def test_holds_when_load_does_not_fit_on_one_fewer():
    assert desired_replicas(3, 0.1, 4.5, 0, CFG) == 3  # 4.5 > 2 * 2 * 0.8
    assert desired_replicas(3, 0.1, 1, 1, CFG) == 4  # a queue is never "low load"


def test_high_ttft_without_contention_does_not_scale_up():
    # One request per replica or less: the TTFT is the model's own floor (or a stale window).
    assert desired_replicas(2, 3.0, 2, 0, CFG) == 2
    assert desired_replicas(1, 3.0, 0, 0, CFG) == 1


def test_never_below_one():
    assert desired_replicas(1, 0.0, 0, 0, CFG) == 1
    assert desired_replicas(0, 0.0, 0, 0, CFG) == 1
    assert desired_replicas(-3, 0.0, 0, 0, CFG) == 1


def test_config_is_strict_and_json_serializable():
    with pytest.raises(ValidationError):
        TTFTAutoscalingPolicyConfig(target_ttft_p90=1.0)  # typo: extra="forbid"
    with pytest.raises(ValidationError):
        TTFTAutoscalingPolicyConfig(target_ttft_p90_s=0)
    with pytest.raises(ValidationError):
        TTFTAutoscalingPolicyConfig(downscale_ttft_fraction=1.5)
    assert TTFTAutoscalingPolicyConfig(**json.loads(json.dumps(CFG.model_dump()))) == CFG
    for name, field in TTFTAutoscalingPolicyConfig.model_fields.items():
        assert field.description, name


# ---------------------------------------------------------------- the entry point


def _series(*values: float, t0: float = 1000.0) -> list[TimeStampedValue]:
    return [TimeStampedValue(t0 + i, v) for i, v in enumerate(values)]


def make_ctx(
    ttft: list[list[float]] | None = None,
    in_flight: list[float] | None = None,
    *,
    running: int | None = None,
    target: int | None = None,
    total: float = 0.0,
    queued: float = 0.0,
    config: AutoscalingConfig | None = None,
    policy_state: dict | None = None,
) -> AutoscalingContext:
    """A real Serve AutoscalingContext; ``ttft[i]`` is replica i's series of p90 samples."""
    n = running if running is not None else len(ttft or [])
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(n)]
    raw: dict = {}
    if ttft is not None:
        raw[TTFT_METRIC] = {rid: _series(*vals) for rid, vals in zip(replicas, ttft)}
    if in_flight is not None:
        raw[IN_FLIGHT_METRIC] = {rid: _series(v) for rid, v in zip(replicas, in_flight)}
    agg = {name: {rid: sum(p.value for p in s) / len(s) for rid, s in per.items()} for name, per in raw.items()}
    config = config or AutoscalingConfig(min_replicas=1, max_replicas=10)
    return AutoscalingContext(
        deployment_id=DEP,
        deployment_name=DEP.name,
        app_name=DEP.app_name,
        current_num_replicas=n,
        target_num_replicas=target if target is not None else n,
        running_replicas=replicas,
        total_num_requests=lambda: total,  # Serve passes lazy callables; exercise that path
        total_queued_requests=lambda: queued,
        aggregated_metrics=lambda: agg,
        raw_metrics=lambda: raw,
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=dict(policy_state or {}),
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time(),
        config=config,
    )


def test_policy_uses_newest_sample_and_max_across_replicas():
    # Replica 0 was slow earlier but its newest p90 is fine; replica 1 is over target now.
    ctx = make_ctx([[3.0, 0.2], [0.3, 1.6]], total=3.0)
    replicas, state = TTFTPolicy()(ctx)
    assert state["dfast_ttft_p90_s"] == pytest.approx(1.6)
    assert replicas == 4  # ceil(2 * 1.6)


def test_policy_scales_up_on_load_from_ctx():
    ctx = make_ctx([[0.1]], total=7.0, queued=5.0)
    assert TTFTPolicy()(ctx)[0] == 4  # ceil(7 / 2)


def test_policy_scales_down_when_idle_and_keeps_state():
    ctx = make_ctx([[0.1], [0.0], [0.2]], in_flight=[0, 0, 0], total=0.0, policy_state={"k": 1})
    replicas, state = TTFTPolicy()(ctx)
    assert replicas == 2
    assert state["k"] == 1 and state["dfast_desired_replicas"] == 2


def test_policy_counts_replica_in_flight_when_handle_metrics_lag():
    ctx = make_ctx([[0.2], [0.2]], in_flight=[4, 3], total=0.0)
    assert TTFTPolicy()(ctx)[0] == 4  # ceil(7 / 2)


def test_policy_falls_back_to_aggregated_metrics_and_missing_metrics():
    ctx = make_ctx([[2.0, 2.0]], total=1.5)  # only the TTFT rule can ask for 2
    ctx.__dict__["raw_metrics"] = {}  # cached_property: pre-seed an empty raw view
    assert TTFTPolicy()(ctx)[0] == 2
    # No custom metrics at all (replica without record_autoscaling_stats): load rule only.
    assert TTFTPolicy()(make_ctx(None, running=2, total=0.0))[0] == 1


def test_policy_kwargs_reach_the_rule():
    ctx = make_ctx([[0.4]], total=2.0)
    assert TTFTPolicy()(ctx)[0] == 1
    assert TTFTPolicy(target_ttft_p90_s=0.2)(ctx)[0] == 2
    assert ttft_policy(ctx, target_ttft_p90_s=0.2)[0] == 2
    with pytest.raises(ValidationError):
        TTFTPolicy(bogus=1)


def test_policy_keeps_in_flight_scale_actions():
    # 1 running, 3 targeted (two replicas still loading weights): a hold must not cancel them.
    assert TTFTPolicy()(make_ctx([[0.1]], target=3, total=0.0))[0] == 3
    # ...but more load than the target can still ask for more.
    assert TTFTPolicy()(make_ctx([[0.1]], target=3, total=9.0))[0] == 5
    # 3 running, 2 targeted (one draining): hold at the new target, not back up to 3.
    assert TTFTPolicy()(make_ctx([[0.7]] * 3, target=2, total=3.0))[0] == 2
    # 0 running: Serve's cold-start path owns this case; keep the target.
    assert TTFTPolicy()(make_ctx(None, running=0, target=1))[0] == 1


# ---------------------------------------------------------------- wiring into Serve


def _serve_policy(cfg_dict: dict):
    """The callable Serve's controller builds from a deployment's autoscaling_config."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config

    config = AutoscalingConfig(**cfg_dict)
    return config, _apply_autoscaling_config(_resolve_policy_callable(config.policy))


def test_autoscaling_config_for_is_a_valid_serve_config():
    cfg = TTFTAutoscalingPolicyConfig(target_ttft_p90_s=0.5)
    d = autoscaling_config_for(cfg, min_replicas=1, max_replicas=3, upscale_delay_s=2, downscale_delay_s=90)
    assert set(d) <= set(AutoscalingConfig.model_fields)  # Serve ignores unknown keys silently
    json.dumps(d)  # goes into serve_config.yaml / policy_kwargs must be JSON
    config = AutoscalingConfig(**d)
    assert config.policy.policy_function == POLICY_PATH == d["policy"]["policy_function"]
    assert d["policy"]["policy_kwargs"] == cfg.model_dump()
    assert config.target_ongoing_requests == cfg.target_ongoing_requests_per_replica
    assert (config.min_replicas, config.max_replicas) == (1, 3)
    assert (config.upscale_delay_s, config.downscale_delay_s) == (2.0, 90.0)
    assert config.upscale_delay_s < 10 and config.downscale_delay_s >= 60
    assert "metrics_interval_s" not in d  # Serve's default unless asked
    with pytest.raises(ValueError):
        autoscaling_config_for(cfg, min_replicas=0)
    with pytest.raises(ValueError):
        autoscaling_config_for(cfg, metrics_interval_s=5, look_back_period_s=5)


def test_serve_instantiates_the_class_with_policy_kwargs():
    d = autoscaling_config_for(TTFTAutoscalingPolicyConfig(target_ttft_p90_s=0.25), max_replicas=5,
                               upscale_delay_s=0, downscale_delay_s=0)
    config, policy = _serve_policy(d)
    ctx = make_ctx([[0.4]], total=2.0, config=config)
    replicas, state = policy(ctx)
    assert replicas == 2  # 0.4 s > 0.25 s only matters if the kwargs arrived
    assert state["dfast_ttft_p90_s"] == pytest.approx(0.4)


def test_serve_applies_delays_and_bounds_on_top():
    d = autoscaling_config_for(CFG, max_replicas=3, upscale_delay_s=60, downscale_delay_s=60)
    config, policy = _serve_policy(d)
    # Wants ceil(20 / 2) = 10, but the upscale delay has not elapsed: Serve holds at target.
    replicas, state = policy(make_ctx([[0.1]], total=20.0, config=config))
    assert replicas == 1 and state  # Serve recorded when the upscale wish started
    # Without a delay the same wish goes through; max_replicas is applied by the controller
    # afterwards (AutoscalingState.apply_bounds), so the wrapped policy still returns 10.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config0, policy0 = _serve_policy({**d, "upscale_delay_s": 0})
    assert policy0(make_ctx([[0.1]], total=20.0, config=config0))[0] == 10
