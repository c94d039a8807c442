"""The one place Ray's errors become API errors: a ``ReplicaClient`` over a Serve DeploymentHandle.

``OpenAIServing`` (``api/serving.py``) sees only ``StreamingChunk`` deltas and ``APIError``s. What a
Ray failure means depends on when it happens:

=============================  ===================================  =================================
Ray raises                     before the first chunk               after it
=============================  ===================================  =================================
``BackPressureError``          503 ``overloaded`` + Retry-After     (cannot happen)
``RayTaskError`` (our bug)     500 ``internal_error``               503 ``replica_failed`` + Retry-After
anything else (actor died,     503 ``replica_unavailable``          503 ``replica_failed`` + Retry-After
unreachable)                   + Retry-After
=============================  ===================================  =================================

An ``APIError`` the replica yields (it refused the request, or the request failed there) is raised as it is.
Deadlines are the serving logic's, not Ray's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from dfast_serve.wire import APIError, ReplicaRequest, StreamingChunk

logger = logging.getLogger(__name__)


READY_CACHE_S = 1.0  # a readiness answer is reused this long: a probe flood costs one controller call a second


class RayReplicaClient:
    """The replicas of one model deployment, reached through its handle."""

    def __init__(self, model: str, handle: DeploymentHandle, retry_after_s: int) -> None:
        self.model = model
        self.retry_after_s = retry_after_s
        self._handle = handle
        self._streaming = handle.options(stream=True)
        self._ready: tuple[float, str] | None = None  # (when, answer)
        self._ready_lock: asyncio.Lock | None = None

    def generate(self, request: ReplicaRequest) -> "RayReplicaCall":
        return RayReplicaCall(self._streaming.generate.remote(request), self.model, self.retry_after_s)

    async def check_ready(self, timeout_s: float) -> str:
        """"ok" when Serve's controller counts a RUNNING replica of this model's deployment.

        The probe never calls a replica: it takes no generation slot and no queue place, and is not
        counted as load by the autoscaler, however many probes arrive. One controller call at a time
        per model, its answer reused for ``READY_CACHE_S``.
        """
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if self._ready is None or time.monotonic() - self._ready[0] >= READY_CACHE_S:
                try:
                    answer = await asyncio.wait_for(asyncio.to_thread(self._replica_state), timeout_s)
                except asyncio.TimeoutError:
                    answer = f"Serve's controller did not answer within {timeout_s:g} s"
                except Exception:  # noqa: BLE001 - no answer from the controller means not ready
                    logger.warning("readiness of %s unknown", self.model, exc_info=True)
                    answer = "replica state unknown"
                self._ready = (time.monotonic(), answer)
            return self._ready[1]

    def _replica_state(self) -> str:
        from ray import serve

        app = serve.status().applications.get(self._handle.app_name)
        deployment = None if app is None else app.deployments.get(self._handle.deployment_name)
        if deployment is None:
            return "not deployed"
        running = deployment.replica_states.get("RUNNING", 0)
        return "ok" if running > 0 else f"no running replica ({deployment.status})"

    async def model_card(self, timeout_s: float) -> dict[str, Any]:
        return await self._utility(self._handle.model_card.remote(), timeout_s)

    async def tokenize(self, prompt: str | None, messages: list[dict[str, str]] | None, add_special_tokens: bool,
                       add_generation_prompt: bool, timeout_s: float) -> list[int]:
        return await self._utility(self._handle.tokenize.remote(prompt, messages, add_special_tokens,
                                                                add_generation_prompt), timeout_s)

    async def detokenize(self, tokens: list[int], timeout_s: float) -> tuple[str, list[str]]:
        return await self._utility(self._handle.detokenize.remote(tokens), timeout_s)

    async def _utility(self, response: DeploymentResponse, timeout_s: float) -> Any:
        """A quick unary call (no generation): its failures map as before the first chunk."""
        try:
            result = await asyncio.wait_for(response, timeout_s)
        except asyncio.TimeoutError:
            cancel(response)
            raise APIError(503, f"Model '{self.model}' did not answer within {timeout_s:g} s; retry shortly",
                           "server_error", None, "replica_unavailable", self.retry_after_s) from None
        except Exception as exc:  # noqa: BLE001 - every Ray failure is mapped
            raise RayReplicaCall(None, self.model, self.retry_after_s)._api_error(exc) from None  # type: ignore[arg-type]
        if isinstance(result, APIError):
            raise result
        return result


class RayReplicaCall:
    """One generation through a streaming handle; see the module docstring for its errors."""

    def __init__(self, generator: DeploymentResponseGenerator, model: str, retry_after_s: int) -> None:
        self._generator = generator
        self._model = model
        self._retry_after_s = retry_after_s
        self._started = False

    def __aiter__(self) -> "RayReplicaCall":
        return self

    async def __anext__(self) -> StreamingChunk:
        try:
            item = await self._generator.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - every Ray failure is mapped; CancelledError passes
            self.cancel()
            raise self._api_error(exc) from None
        if isinstance(item, APIError):
            raise item
        self._started = True
        return item

    def cancel(self) -> None:
        cancel(self._generator)

    def _api_error(self, exc: Exception) -> APIError:
        """The client's error; Ray's exception (class names, tracebacks) goes to the log only."""
        logger.warning("a call to model %s failed", self._model, exc_info=exc)
        retry = self._retry_after_s
        if self._started:
            return APIError(503, f"Generation on model '{self._model}' failed (its replica stopped); retry",
                            "server_error", None, "replica_failed", retry)
        if isinstance(exc, BackPressureError):
            return APIError(503, f"Model '{self._model}' is at capacity; retry shortly", "server_overloaded", None,
                            "overloaded", retry)
        if isinstance(exc, RayTaskError):  # the replica's own code raised: a bug, not unavailability
            return APIError(500, f"Model '{self._model}' failed on this request", "server_error", None,
                            "internal_error")
        return APIError(503, f"Model '{self._model}' is unavailable; retry shortly",
                        "server_error", None, "replica_unavailable", retry)


def cancel(call: DeploymentResponse | DeploymentResponseGenerator) -> None:
    """Best-effort cancel of a handle call, which may have ended already in any way.

    Ray's ``cancel()`` re-raises the error of a call whose assignment to a replica failed (a
    ``BackPressureError``, say); every caller here has handled that error already.
    """
    try:
        call.cancel()
    except Exception:  # noqa: BLE001, S110 - see above
        pass
