"""A Ray Serve autoscaling policy for model replicas, driven by time to first token.

Serve's default policy keeps ``ongoing requests / replicas`` near ``target_ongoing_requests``.
That is a throughput rule; what a streaming user feels is the time to the first token (TTFT),
which grows with queueing and with batch contention long before a request-count target says
"full". This policy scales on both signals:

* **up** when the p90 TTFT reported by the replicas passes ``target_ttft_p90_s`` (and the
  replicas are actually shared, see ``ttft_upscale_min_requests_per_replica``), or when the
  ongoing requests exceed ``target_ongoing_requests_per_replica`` per replica, or when
  requests queue at the handles. Always by at least one replica, and proportionally to the
  load / TTFT overshoot when that asks for more.
* **down**, one replica at a time, only when p90 TTFT is well under target
  (``downscale_ttft_fraction``) *and* the load would still fit on one replica fewer.
* otherwise **hold**.

How Ray Serve 2.60 runs it (read from ``ray/serve/config.py``, ``autoscaling_policy.py`` and
``_private/autoscaling_state.py``, ``_private/replica.py``):

* ``autoscaling_config.policy = {"policy_function": "module:attr", "policy_kwargs": {...}}``.
  ``policy_kwargs`` is used *only* when ``attr`` is a class: the controller instantiates it once
  as ``attr(**policy_kwargs)`` and then calls ``instance(ctx)`` every control-loop tick
  (~0.1 s). A plain function is called as ``fn(ctx)`` and never sees ``policy_kwargs``. Hence
  the entry point is the class :class:`TTFTPolicy` (:data:`POLICY_PATH`).
* The callable returns ``(desired_replicas, policy_state)``. Serve wraps it
  (``_apply_autoscaling_config``): a cold-start fast path (0 running replicas and pending
  requests → scale up without calling the policy), ``upscaling_factor``/``downscaling_factor``,
  ``upscale_delay_s``/``downscale_delay_s`` (the decision must persist that long, measured
  against the *target* replica count), and finally ``min_replicas``/``max_replicas`` adjusted
  for target capacity (``apply_bounds``). So this module clamps nothing except ``>= 1``.
* A replica class that defines ``record_autoscaling_stats(self) -> dict[str, float]`` has it
  called every ``min(look_back_period_s * 0.2, metrics_interval_s)`` seconds; the samples of
  the last ``look_back_period_s`` are pushed to the controller every ``metrics_interval_s``
  seconds (default 10 s; in 2.60 the env vars ``RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S``
  are defined but not read, the deprecated ``metrics_interval_s`` field is what counts). The
  policy sees them as ``ctx.raw_metrics[name][replica_id] -> [TimeStampedValue(timestamp,
  value), ...]`` and ``ctx.aggregated_metrics[name][replica_id] -> float`` (time-weighted
  ``aggregation_function``, default mean, over the window), for RUNNING replicas only.
  Our replicas report ``{"ttft_p90_s": ..., "in_flight": ...}`` (see :data:`TTFT_METRIC`).

Why the streaming-friendly values of ``serve_config.cluster.yaml``'s ``autoscaling`` (the tests build
the same with ``tests/serve/autoscaling_helpers.py``):

* small ``target_ongoing_requests`` (2): a replica that holds more concurrent streams shares
  its forward passes among them, and the first token of a new request waits for a slot in
  that shared loop; TTFT degrades long before throughput saturates.
* short ``upscale_delay_s`` (3 s): the policy already waits for a p90 over ~30 s of requests
  and a multi-second metrics push; a long delay on top adds directly to every queued user's
  TTFT while a new GPU replica (which itself needs tens of seconds to load weights) starts.
* long ``downscale_delay_s`` (120 s): a streaming request holds its replica for its whole
  generation, traffic is bursty, and giving back a GPU replica that must be re-created a
  minute later costs a full model load; flapping is far more expensive than idling a while.
* ``look_back_period_s`` 15 s instead of 30 s: ``ctx.total_num_requests`` is a mean over this
  window; 15 s reacts to a burst twice as fast while still spanning more than one push.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

#: ``policy_function`` value for a deployment's ``autoscaling_config.policy``.
POLICY_PATH = "dfast_serve.serve.autoscaling:TTFTPolicy"
#: Keys of the dict a replica's ``record_autoscaling_stats()`` returns.
TTFT_METRIC = "ttft_p90_s"
IN_FLIGHT_METRIC = "in_flight"


class TTFTAutoscalingPolicyConfig(BaseModel):
    """Knobs of the TTFT policy; passed to Serve as ``policy_kwargs`` (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_ttft_p90_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Service level for time to first token: when the p90 TTFT reported by any replica "
            "(each over its last ~30 s of requests) exceeds this many seconds, scale up."
        ),
    )
    target_ongoing_requests_per_replica: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Ongoing (running + queued) requests one replica should carry. Above it, scale up "
            "to ceil(total / target) replicas; the same value is written to Serve's "
            "target_ongoing_requests so Serve's own metrics and default policy agree."
        ),
    )
    downscale_ttft_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Scale down only when p90 TTFT is below this fraction of target_ttft_p90_s (and the "
            "load is low, see downscale_load_fraction). The gap between this and 1.0 is the "
            "hysteresis band where the policy holds."
        ),
    )
    downscale_load_fraction: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description=(
            "Load is 'low' when the ongoing requests would fit on one replica fewer at this "
            "fraction of target_ongoing_requests_per_replica, and nothing is queued."
        ),
    )
    ttft_upscale_min_requests_per_replica: float = Field(
        default=1.0,
        ge=0,
        description=(
            "TTFT-driven scale-up needs more than this many ongoing requests per replica. With "
            "at most one request per replica, a high TTFT is the model's own prefill floor (or "
            "a stale window with no traffic), which more replicas cannot fix."
        ),
    )
    max_ttft_upscale_factor: float = Field(
        default=2.0,
        ge=1,
        description=(
            "A TTFT-driven step scales the replica count by the TTFT overshoot "
            "(p90 / target), capped at this factor per decision."
        ),
    )
    queued_requests_upscale_threshold: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Requests waiting at the deployment handles (no replica slot free) at or above "
            "this count trigger a scale-up: each of them is TTFT lost."
        ),
    )


def desired_replicas(
    current_replicas: int,
    ttft_p90_s: float,
    total_requests: float,
    total_queued: float,
    cfg: TTFTAutoscalingPolicyConfig,
) -> int:
    """The replica count the TTFT rule asks for, given the current state. Pure.

    ``current_replicas`` is the number of running replicas; ``ttft_p90_s`` the p90 TTFT across
    them (0.0 when unknown); ``total_requests`` the ongoing (running + queued) requests of the
    deployment; ``total_queued`` those still queued at the handles.

    * up (at least +1): p90 TTFT above target while replicas are shared, or load above target
      per replica, or a queue at the handles. Load asks for ``ceil(total / target)``, TTFT for
      ``ceil(n * min(p90 / target, max_ttft_upscale_factor))``; the larger wins.
    * down (exactly -1): p90 TTFT below ``downscale_ttft_fraction * target`` and the load fits
      on ``n - 1`` replicas at ``downscale_load_fraction`` of target and nothing is queued.
    * else hold. Never below 1. Serve applies min/max replicas, scaling factors and the
      upscale/downscale delays to the returned value (``ray.serve.autoscaling_policy.
      _apply_autoscaling_config`` and ``AutoscalingState.apply_bounds``).
    """
    n = max(1, int(current_replicas))
    ttft = max(0.0, float(ttft_p90_s))
    total = max(0.0, float(total_requests))
    queued = max(0.0, float(total_queued))
    per_replica_target = cfg.target_ongoing_requests_per_replica

    ttft_high = (
        ttft > cfg.target_ttft_p90_s
        and total > n * cfg.ttft_upscale_min_requests_per_replica
    )
    load_high = total > n * per_replica_target
    queue_high = queued >= cfg.queued_requests_upscale_threshold

    if ttft_high or load_high or queue_high:
        up = n + 1
        if load_high or queue_high:
            up = max(up, math.ceil(total / per_replica_target))
        if ttft_high:
            overshoot = min(ttft / cfg.target_ttft_p90_s, cfg.max_ttft_upscale_factor)
            up = max(up, math.ceil(n * overshoot))
        return up

    ttft_low = ttft < cfg.downscale_ttft_fraction * cfg.target_ttft_p90_s
    load_low = total <= (n - 1) * per_replica_target * cfg.downscale_load_fraction
    if n > 1 and ttft_low and load_low and queued == 0.0:
        return n - 1
    return n


def _latest_value(series: Any) -> Optional[float]:
    """Newest value of a Serve TimeSeries (list of TimeStampedValue), or a bare number."""
    if series is None:
        return None
    if isinstance(series, (int, float)):
        return float(series)
    points = list(series)
    if not points:
        return None
    return float(max(points, key=lambda p: p.timestamp).value)


def _per_replica(ctx: Any, name: str, replica_ids: Iterable[Any]) -> dict[Any, float]:
    """``name`` per running replica: the newest raw sample, else Serve's aggregate."""
    raw: Mapping[str, Mapping[Any, Any]] = ctx.raw_metrics or {}
    agg: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
    raw_m, agg_m = raw.get(name, {}), agg.get(name, {})
    out: dict[Any, float] = {}
    for rid in replica_ids:
        value = _latest_value(raw_m.get(rid))
        if value is None and rid in agg_m:
            value = float(agg_m[rid])
        if value is not None and math.isfinite(value):
            out[rid] = value
    return out


class TTFTPolicy:
    """The callable Serve runs (``policy_function: dfast_serve.serve.autoscaling:TTFTPolicy``).

    Serve 2.60 instantiates it once with ``**policy_kwargs`` (validated into
    :class:`TTFTAutoscalingPolicyConfig`, unknown keys rejected) and calls
    ``instance(ctx: AutoscalingContext) -> (int, dict)`` on every control-loop tick.

    Aggregation across replicas: **max** of the replicas' p90 TTFT, each taken from its newest
    sample (a replica already reports a rolling 30 s p90; averaging that again over the
    look-back window would only add lag). Max, not mean: the service level is per request and
    the router cannot move a stream once it started, so one overloaded replica means its users
    miss the target however idle the others are; a mean would hide it. Outliers are already
    damped by each replica's own p90, and ``ttft_upscale_min_requests_per_replica`` keeps a
    replica that is slow without contention from pushing the count up.

    Load: ``max(ctx.total_num_requests, sum of the replicas' "in_flight")`` — the handle-side
    count (running + queued, mean over ``look_back_period_s``) normally dominates; the
    replicas' own count covers handle metrics that arrive late.

    Scale actions in flight: when replicas are still starting (``running < target``) the
    policy never returns less than the current target (it would cancel a scale-up whose
    replicas are loading weights) and only asks for more if the rule, computed on the running
    replicas, exceeds the target. When replicas are being removed (``running > target``), it
    returns the target unless the rule asks for more than are running.
    """

    def __init__(self, **policy_kwargs: Any) -> None:
        self.config = TTFTAutoscalingPolicyConfig(**policy_kwargs)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        running = int(ctx.current_num_replicas)
        target = int(ctx.target_num_replicas)
        state = dict(ctx.policy_state or {})
        if running == 0:
            # Serve's cold-start path already handles "0 replicas and requests waiting" before
            # calling us; with no requests there is nothing to measure, so keep the target.
            return target, state

        replica_ids = list(ctx.running_replicas or [])
        ttfts = _per_replica(ctx, TTFT_METRIC, replica_ids)
        in_flight = _per_replica(ctx, IN_FLIGHT_METRIC, replica_ids)
        ttft_p90 = max(ttfts.values(), default=0.0)
        total = max(float(ctx.total_num_requests or 0.0), sum(in_flight.values()))
        queued = float(ctx.total_queued_requests or 0.0)

        desired = desired_replicas(running, ttft_p90, total, queued, self.config)
        decision = desired
        if running < target:  # scale-up in progress: do not undo it
            decision = max(desired, target)
        elif running > target and desired <= running:  # scale-down in progress: keep it
            decision = target

        state.update(
            {
                "dfast_ttft_p90_s": ttft_p90,
                "dfast_total_requests": total,
                "dfast_queued_requests": queued,
                "dfast_desired_replicas": desired,
            }
        )
        return decision, state
