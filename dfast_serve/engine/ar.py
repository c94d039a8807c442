"""Autoregressive generation with a KV cache: one prefill, then one forward pass per token.

Every token is streamed the moment it is decoded (subject only to the detokenizer's UTF-8 and
stop-string hold-back): the first chunk leaves right after the prefill pass that produces it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.sampling import choose_tokens, make_generator
from dfast_serve.engine.types import FinishReason, GenerationRequest, StreamingChunk
from dfast_serve.models.adapters import CausalLM


@dataclass
class ARSequence:
    """One request's state: the next input, its KV cache and its stream."""

    request: GenerationRequest
    next_input: torch.Tensor  # (1, n): the prompt before prefill, then the last sampled token
    detokenizer: StreamingDetokenizer
    eos_ids: frozenset[int]
    generator: torch.Generator
    past_key_values: Any = None
    started: float = field(default_factory=time.perf_counter)
    nfe: int = 0
    generated: int = 0
    finish_reason: FinishReason | None = None
    chunks_sent: int = 0
    pending: list[StreamingChunk] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def advance(self, last_logits: torch.Tensor, past_key_values: Any) -> None:
        """Take the logits of the last position, choose the next token and stream it."""
        params = self.request.params
        self.nfe += 1
        self.past_key_values = past_key_values
        token = int(choose_tokens(last_logits, params.temperature, self.generator, params.top_k, params.top_p))
        self.next_input = torch.tensor([[token]], device=self.next_input.device)
        is_eos = token in self.eos_ids
        new_ids = [] if is_eos else [token]
        self.generated += len(new_ids)
        text = self.detokenizer.add(new_ids)
        if self.detokenizer.stopped or is_eos:
            self.finish_reason = "stop"
        elif self.generated >= params.max_tokens:
            self.finish_reason = "length"
        if self.finished:
            text += self.detokenizer.finish()
        if text or self.finished:
            self.pending.append(
                StreamingChunk(
                    new_text=text,
                    full_text=self.detokenizer.text,
                    new_tokens=len(new_ids),
                    total_tokens=self.generated,
                    target_tokens=params.max_tokens,
                    progress=1.0 if self.finished else self.generated / params.max_tokens,
                    time_ms=(time.perf_counter() - self.started) * 1000.0,
                    is_first=self.chunks_sent + len(self.pending) == 0,
                    is_final=self.finished,
                    nfe=self.nfe,
                    finish_reason=self.finish_reason,
                    prompt_tokens=len(self.request.prompt_ids),
                )
            )

    def drain(self) -> list[StreamingChunk]:
        out, self.pending = self.pending, []
        self.chunks_sent += len(out)
        return out


class AREngine:
    """Runs AR sequences on one causal LM. ``forward_passes`` counts every pass it makes."""

    kind = "ar"

    def __init__(self, model: CausalLM) -> None:
        self.model = model
        self.forward_passes = 0
        # transformers 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`.
        params = inspect.signature(model.network.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def start(self, request: GenerationRequest) -> ARSequence:
        if request.params.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        total = len(request.prompt_ids) + request.params.max_tokens
        if total > self.model.max_context:
            raise ValueError(f"prompt ({len(request.prompt_ids)}) + max_tokens ({request.params.max_tokens}) exceeds the context ({self.model.max_context})")
        device = self.model.device
        return ARSequence(
            request=request,
            next_input=torch.tensor([request.prompt_ids], dtype=torch.long, device=device),
            detokenizer=StreamingDetokenizer(self.model.tokenizer, request.params.stop),
            eos_ids=self.model.eos_token_ids,
            generator=make_generator(request.params.seed, device),
        )

    @torch.inference_mode()
    def step(self, sequences: list[ARSequence]) -> None:
        """Prefill (first call) or decode one token, for each sequence."""
        for seq in sequences:
            kwargs = {self._cache_arg: seq.past_key_values}
            out = self.model.network(input_ids=seq.next_input, use_cache=True, **kwargs)
            self.forward_passes += 1
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            seq.advance(out.logits[0, -1].float(), cache)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        seq = self.start(request)
        while not seq.finished:
            if should_stop is not None and should_stop():
                return
            self.step([seq])
            yield from seq.drain()
