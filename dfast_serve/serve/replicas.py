"""The model replica deployment: one model, loaded once in the constructor, generating for the ingress.

``generate`` takes a ``ReplicaRequest`` and is an async generator of ``StreamingChunk`` deltas (or
one ``APIError``), called by the ingress's replica client (``serve/replica_client.py``)
through a ``DeploymentHandle`` with ``stream=True``. The engine is plain synchronous torch code; it runs
on the replica's step loop thread (``step_loop.StepLoop``), so the event loop stays free to accept
and cancel requests. Concurrent requests share each step's forward passes (step-level batching,
``replica.max_batch_size``). A request whose caller goes away (client disconnect, timeout) is
cancelled and leaves the batch before the next step.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, AsyncIterator

import torch
from ray import serve

from dfast_serve.config import DiffusionOptions, ModelConfig, ReplicaConfig
from dfast_serve.engine import EngineCore, EngineLimits, GenerationRequest, SamplingParams, build_engine
from dfast_serve.models.registry import load_model
from dfast_serve.serve.replica_stats import ReplicaLoad
from dfast_serve.serve.replica_tokens import ReplicaTokens
from dfast_serve.serve.step_loop import StepLoop
from dfast_serve.wire import APIError, ReplicaRequest, StreamingChunk

UNHEALTHY_AFTER_FAILED_PASSES = 8  # passes in a row that failed even alone: the device is broken (a sticky CUDA error)
logger = logging.getLogger(__name__)


@serve.deployment
class ModelReplica(ReplicaTokens):
    """Any served model, diffusion or AR; ``build_app`` deploys it once per model under the names
    ``DiffusionReplica`` / ``ARReplica`` (``app.replica_deployment_name``).

    ``diffusion`` is the model's resolved diffusion options (``ServerConfig.resolve_diffusion``, run
    once in ``build_app``): the engine's defaults and what ``stats`` reports. Requests from the
    ingress carry their own, the same options with the request's ``dfast`` overrides applied.
    """

    def __init__(self, model: dict[str, Any], diffusion: DiffusionOptions | None = None,
                 replica: dict[str, Any] | None = None) -> None:
        config = ModelConfig.model_validate({k: model[k] for k in ModelConfig.model_fields if k in model})
        replica_config = ReplicaConfig.model_validate(replica or {})
        self.name = config.name
        if replica_config.torch_threads is not None:  # else Ray's OMP_NUM_THREADS = floor(num_cpus) stands
            torch.set_num_threads(replica_config.torch_threads)
        if replica_config.gil_switch_interval_ms is not None:  # process-wide: a replica has its own process
            sys.setswitchinterval(replica_config.gil_switch_interval_ms / 1000)
        self.model = load_model(**config.model_dump())
        self.tokenizing = self.model  # encode_prompt, encode_chat and the tokenizer (ReplicaTokens)
        self.diffusion = diffusion or DiffusionOptions()
        self.limits = replica_config
        self.engine = engine_for(self.model, replica_config, self.diffusion)
        self._warm_up()
        self._loop = StepLoop(self.engine, name=self.name)
        self.load = ReplicaLoad()

    def _warm_up(self) -> None:
        """Two tiny generations so the first real request does not pay for lazy initialisation (and the AR prefill
        pacer has measured a prefill and a decode pass past the first of each)."""
        ids = self.model.encode_prompt("Hello")
        for _ in range(2):
            for _ in self.engine.generate(GenerationRequest(ids, SamplingParams(max_tokens=3, ignore_eos=True))):
                pass

    # ---- request path -----------------------------------------------------------------------
    def _encode(self, request: ReplicaRequest) -> GenerationRequest | APIError:
        """Tokenize, then the family's checks (its limits, once, before admission): the engine's request,
        or the refusal (400 naming the field)."""
        field = "messages" if request.messages is not None else "prompt"
        try:
            ids = self._tokens(request.prompt, request.messages)
        except APIError as refused:  # a control token typed into a message
            return refused
        except Exception as exc:  # noqa: BLE001 - a template that rejects the messages is the client's error
            return self._untokenizable(field, exc)
        encoded = GenerationRequest(prompt_ids=ids, params=request.params, request_id=request.request_id,
                                    diffusion=request.diffusion, prompt_field=field)
        try:
            self.engine.validate(encoded)
        except APIError as refused:
            return refused
        return encoded

    async def generate(self, request: ReplicaRequest) -> AsyncIterator[StreamingChunk | APIError]:
        """Stream chunk deltas; a request the replica refuses, or whose own generation fails, ends with
        one ``APIError`` (the engine isolates a request's failure: its batch mates go on). This is the
        one place an engine failure becomes a wire error.

        Tokenizing runs in a worker thread: a long prompt (up to the router's ``max_prompt_chars``)
        takes a while, and the event loop meanwhile relays the other streams' chunks and cancellations.
        """
        encoded = await asyncio.to_thread(self._encode, request)
        if isinstance(encoded, APIError):
            yield encoded
            return
        subscription = self._loop.submit(encoded)
        started = self.load.started()
        try:
            async for chunk in subscription.chunks():
                if chunk.is_first:
                    self.load.first_chunk(started)
                yield chunk
        except Exception:  # noqa: BLE001 - this request's generation failed; logged, the client gets an error
            logger.exception("request %s failed", request.request_id)
            yield APIError(500, f"Model '{self.name}' failed while generating this request", "server_error",
                           None, "generation_failed")
        finally:
            subscription.cancel()  # caller gone or stream done: it leaves the batch before the next step
            self.load.ended()

    # ---- tokens (vLLM's /tokenize and /detokenize run here, with the model's own tokenizer) ----------
    def model_card(self) -> dict[str, Any]:
        """Where the tokenizer came from (vLLM's ``root``: a path or hub id) and the context length."""
        return {"root": str(getattr(self.model.tokenizer, "name_or_path", "") or self.name),
                "max_model_len": self.model.max_context}

    # ---- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters the tests read (forward passes prove a cancelled request stopped), and the diffusion
        options this replica was given (they show that settings reached it)."""
        return {"model": self.name, "engine": self.engine.kind, "forward_passes": self.engine.forward_passes,
                "in_flight": self.load.in_flight, "requests": self.load.requests, "steps": self._loop.steps,
                "active": self._loop.active, "waiting": self._loop.waiting,
                "max_batch_size": self.engine.max_batch_size,
                "batch_invariance": self.limits.batch_invariance, "diffusion": self.diffusion.model_dump(),
                "torch_threads": torch.get_num_threads()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for the TTFT autoscaling policy (dfast_serve.serve.autoscaling)."""
        return self.load.autoscaling_stats()

    def check_health(self) -> None:
        """Serve's liveness probe (every ``health_check_period_s``): a replica whose engine thread died, or
        whose last ``UNHEALTHY_AFTER_FAILED_PASSES`` passes all failed even for one request alone, cannot
        generate, so it fails, and Serve replaces it."""
        if not self._loop.alive:
            raise RuntimeError(f"the engine thread of '{self.name}' is not running")
        if self.engine.failed_in_a_row >= UNHEALTHY_AFTER_FAILED_PASSES:
            raise RuntimeError(f"the last {self.engine.failed_in_a_row} forward passes of '{self.name}' all failed")

    def node_id(self) -> str:
        """The Ray node this replica runs on (GPU placement is checked with it)."""
        import ray

        return ray.get_runtime_context().get_node_id()


def engine_for(model: Any, replica: ReplicaConfig, diffusion: DiffusionOptions | None = None) -> EngineCore:
    """The replica's engine: step-level batching up to ``replica.max_batch_size`` for every dtype, at most
    ``replica.max_ongoing_requests`` running and ``replica.max_running_tokens`` reserved by them, the step's
    ``replica.step_token_budget``, with ``replica.batch_invariance`` deciding whether a request's output may
    depend on its batch mates and the replica's caps on what one request may ask for."""
    return build_engine(model, replica.max_batch_size, replica.step_token_budget, replica.batch_invariance,
                        max_running=replica.max_ongoing_requests, max_running_tokens=replica.max_running_tokens,
                        prefill_chunk_decodes=replica.prefill_chunk_decodes, pass_piece_tokens=replica.pass_piece_tokens,
                        limits=EngineLimits(replica.max_canvas_tokens, replica.max_block_length,
                                            replica.max_draft_tokens),
                        diffusion_defaults=diffusion)
