"""The ``engine: vllm`` replica: an AR model on vLLM's async engine (``AsyncLLM``, in this process).

It answers the ingress exactly as ``ModelReplica`` does (``generate`` streams ``StreamingChunk`` deltas or
one ``APIError``; ``model_card``, ``tokenize``, ``detokenize``, ``stats``, the autoscaling stats), so the
router, the OpenAI API, limits, metrics and cancellation are the same for both AR engines. vLLM does
the scheduling (continuous batching, chunked prefill, paged KV cache, prefix caching, CUDA graphs).

It runs in vLLM's own Python environment (``runtime_env.py_executable``, ``config/vllm.py``): this module
and what it imports need ray, pydantic and vLLM only (no torch at import time, none of the engine or model
code, which need the main environment's transformers); an import-linter contract keeps it so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any, AsyncIterator

from ray import serve

from dfast_serve.config.models import ServedModelConfig
from dfast_serve.models.cache import smollm2_dir
from dfast_serve.models.tokenizing import Tokenizing
from dfast_serve.serve.replica_stats import ReplicaLoad
from dfast_serve.serve.replica_tokens import ReplicaTokens
from dfast_serve.serve.vllm_mapping import ChunkStream, context_error, sampling_kwargs
from dfast_serve.wire import APIError, ReplicaRequest, StreamingChunk, bad_request

logger = logging.getLogger(__name__)


@serve.deployment
class VLLMReplica(ReplicaTokens):
    """One AR model on vLLM. ``model`` is the served model's config without its ``replica`` section, which
    comes as ``replica`` (both dumped by ``build_app``); ``diffusion`` is always None (the common signature)."""

    async def __init__(self, model: dict[str, Any], diffusion: Any = None,
                       replica: dict[str, Any] | None = None) -> None:
        import torch

        config = ServedModelConfig.model_validate({**model, "replica": replica or {}})
        options = config.vllm
        assert options is not None  # ServedModelConfig fills it for engine: vllm
        self.name = config.name
        on_gpu = config.device != "cpu" and torch.cuda.is_available()
        if not on_gpu:  # read when vLLM picks its platform (first import) and by its engine process
            os.environ["VLLM_TARGET_DEVICE"] = "cpu"
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kv_cache_space_gib)
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        dtype = config.dtype if config.dtype != "auto" else ("auto" if on_gpu else "float32")
        path = str(smollm2_dir()) if config.source == "embedded" else str(config.path)
        if config.source == "embedded" and not os.path.isdir(path):
            raise RuntimeError(f"the embedded SmolLM2 checkpoint is not prepared on this node ({path}): run "
                               "`python -m dfast_serve.models.embedded` with the main environment (setup.sh does)")
        self.root = path
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**options.engine_args(
            path, config.name, dtype, config.revision, config.replica.max_ongoing_requests)))
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self.tokenizing = Tokenizing(self.engine.get_tokenizer())
        self.load = ReplicaLoad()
        self.aborted = 0
        await self._warm_up()

    async def _warm_up(self) -> None:
        """One tiny generation, so the first request does not pay for the engine's lazy start."""
        from vllm import SamplingParams

        async for _ in self.engine.generate({"prompt_token_ids": self.tokenizing.encode_prompt("Hello")},
                                            SamplingParams(max_tokens=2), f"warm-up-{uuid.uuid4().hex}"):
            pass

    # ---- request path -----------------------------------------------------------------------
    def _prepare(self, request: ReplicaRequest) -> tuple[list[int], Any] | APIError:
        """Tokens and vLLM's sampling parameters, or the refusal (400 naming the field)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        field = "messages" if request.messages is not None else "prompt"
        try:
            kwargs = sampling_kwargs(request.params)
            ids = self._tokens(request.prompt, request.messages)
        except APIError as refused:
            return refused
        except Exception as exc:  # noqa: BLE001 - a template that rejects the messages is the client's error
            return self._untokenizable(field, exc)
        if not ids:
            return bad_request(f"{field} encodes to no tokens", field)
        refused = context_error(len(ids), request.params.max_tokens, self.max_model_len, field)
        if refused is not None:
            return refused
        try:
            return ids, SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)
        except ValueError as exc:  # vLLM's own checks of a value our API accepted
            return bad_request(f"engine: vllm refused the sampling parameters: {exc}", None)

    async def generate(self, request: ReplicaRequest) -> AsyncIterator[StreamingChunk | APIError]:
        """Stream chunk deltas, or end with one ``APIError``. When the caller goes away, Serve cancels this
        generator; vLLM's ``generate`` aborts the request in the engine as the cancellation passes through."""
        prepared = await asyncio.to_thread(self._prepare, request)
        if isinstance(prepared, APIError):
            yield prepared
            return
        ids, params = prepared
        stream = ChunkStream(len(ids), request.params.max_tokens)
        started = self.load.started()
        finished = False
        try:
            # A unique id per generation: a client's x-request-id may repeat, vLLM's must not.
            async for output in self.engine.generate({"prompt_token_ids": ids}, params,
                                                     f"{request.request_id}-{uuid.uuid4().hex[:8]}"):
                chunk = stream.chunk(output)
                finished = bool(output.finished)
                if chunk is None:
                    continue
                if chunk.is_first:
                    self.load.first_chunk(started)
                yield chunk
        except Exception:  # noqa: BLE001 - this request's generation failed; logged, the client gets an error
            logger.exception("request %s failed", request.request_id)
            yield APIError(500, f"Model '{self.name}' failed while generating this request", "server_error",
                           None, "generation_failed")
        finally:
            if not finished:
                self.aborted += 1
            self.load.ended()

    # ---- tokens ------------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        return {"root": self.root, "max_model_len": self.max_model_len}

    # ---- observability ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``unfinished`` is vLLM's own count of requests it still holds: 0 after a cancelled stream proves the
        engine dropped it."""
        return {"model": self.name, "engine": "vllm", "in_flight": self.load.in_flight,
                "requests": self.load.requests, "aborted": self.aborted,
                "unfinished": self.engine.output_processor.get_num_unfinished_requests()}

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.load.autoscaling_stats()

    async def check_health(self) -> None:
        """Serve's liveness probe: vLLM's engine process must be alive (``EngineDeadError`` otherwise)."""
        await self.engine.check_health()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()
