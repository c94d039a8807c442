"""Replicas that exist only in tests; Ray's processes get this module by value (``cloudpickle``).

``PacedReplica``: ``ModelReplica`` whose every forward pass takes at least ``PASS_S``, so a request of
many passes outlasts the test app's timeouts on any host (a GPU finishes 256 tiny-mdlm passes in well
under a second). ``FailingReplica``: a fault-injection replica, ``ModelReplica`` whose engine fails every
request whose prompt starts with ``FAIL_MARK``, on its own, at the first step after one of that
request's chunks was handed out (so it always fails mid-stream: which pass first reveals text depends
on its batch mates), the way the engine marks a sequence whose own work failed (``Sequence.fail``). Its batch
mates are stepped as usual. ``BreakingReplica``: once a request whose prompt starts with ``BREAK_MARK`` has
arrived, every forward pass of that replica process fails (a sticky device error, as a CUDA fault leaves
a GPU); a replica Serve starts in its place is whole."""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from dfast_serve.wire import APIError, ReplicaRequest
from dfast_serve.serve.replicas import ModelReplica

FAIL_MARK = "FAIL-HERE "
BREAK_MARK = "BREAK-THE-ENGINE "
PASS_S = 0.05  # a paced replica's shortest forward pass: 256 passes take at least 12.8 s


class PacedReplica(ModelReplica.func_or_class):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        forward = self.engine.family.forward

        def paced_forward(pass_: Any) -> Any:
            started = time.monotonic()
            output = forward(pass_)
            time.sleep(max(0.0, PASS_S - (time.monotonic() - started)))  # pacing the model, not awaiting a result
            return output

        self.engine.family.forward = paced_forward  # the core calls family.forward on this instance


class FailingReplica(ModelReplica.func_or_class):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.doomed: set[str] = set()
        step_sequences = self.engine.step_sequences

        def step_then_fail(sequences: list) -> None:
            step_sequences(sequences)
            for sequence in sequences:
                if (sequence.request.request_id in self.doomed and sequence.error is None
                        and sequence.chunks_sent > 0):
                    sequence.fail(RuntimeError("injected failure"))

        self.engine.step_sequences = step_then_fail  # the core's step calls step_sequences on this instance

    def _encode(self, request: ReplicaRequest):  # type: ignore[override]
        encoded = super()._encode(request)
        if not isinstance(encoded, APIError) and (request.prompt or "").startswith(FAIL_MARK):
            self.doomed.add(request.request_id)
        return encoded


class BreakingReplica(ModelReplica.func_or_class):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.broken = False
        forward = self.engine.family.forward

        def forward_unless_broken(pass_: Any) -> Any:
            if self.broken:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
            return forward(pass_)

        self.engine.family.forward = forward_unless_broken  # the core calls family.forward on this instance

    def _encode(self, request: ReplicaRequest):  # type: ignore[override]
        if (request.prompt or "").startswith(BREAK_MARK):
            self.broken = True
        return super()._encode(request)


FailingReplicaDeployment = serve.deployment(FailingReplica)
# Serve probes every second (default 10 s) so that the test sees the replacement within seconds.
BreakingReplicaDeployment = serve.deployment(BreakingReplica, health_check_period_s=1, health_check_timeout_s=10)
PacedReplicaDeployment = serve.deployment(PacedReplica)
