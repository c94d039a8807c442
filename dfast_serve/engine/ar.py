"""Autoregressive generation with a KV cache: one prefill, then one forward pass per token.

Every token is streamed the moment it is decoded (subject only to the detokenizer's UTF-8 and
stop-string hold-back): the first chunk leaves right after the prefill pass that produces it.

``AREngine.step`` runs several sequences in one forward pass, each at its own point (prefill or
decode): new tokens and KV caches are left-padded into one batch with an attention mask and
explicit position ids, and the merged cache is split back per sequence without its padding. Each
sequence keeps its own ``DynamicCache``; merging copies them every step, which is cheap next to
the forward pass for small models and keeps joining and leaving the batch trivial. Only caches
made of plain ``DynamicLayer``s are merged (sliding-window or quantized layers would need their
own bookkeeping): a model whose cache has other layers steps its sequences one at a time.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine.batching import chunks, left_pad
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
    """Runs AR sequences on one causal LM. ``forward_passes`` counts every pass it makes;
    ``max_batch_size`` bounds how many sequences ``step`` puts in one pass."""

    kind = "ar"

    def __init__(self, model: CausalLM, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.forward_passes = 0
        # transformers 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`.
        params = inspect.signature(model.network.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._mergeable = _plain_dynamic_cache(model.network.config)

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
        """Prefill (first call) or decode one token, for each sequence: ``max_batch_size`` a pass."""
        for batch in chunks(sequences, self.max_batch_size):
            if len(batch) > 1 and self._mergeable:
                self._run_batch(batch)
                continue
            for seq in batch:
                out = self.model.network(input_ids=seq.next_input, use_cache=True, **{self._cache_arg: seq.past_key_values})
                self.forward_passes += 1
                seq.advance(out.logits[0, -1].float(), _cache_of(out))

    def _run_batch(self, batch: list[ARSequence]) -> None:
        """One pass for sequences at different points: [cache padding | cache | input padding | input] per row."""
        from transformers import DynamicCache

        device = self.model.device
        past_lens = [0 if s.past_key_values is None else s.past_key_values.get_seq_length() for s in batch]
        ids, mask = left_pad([s.next_input[0] for s in batch])
        positions, _ = left_pad([torch.arange(p, p + s.next_input.shape[1], device=device) for p, s in zip(past_lens, batch)])
        cache = None
        if max(past_lens) > 0:
            caches = [s.past_key_values for s in batch]
            reference = next(c for c in caches if c is not None)
            layers = []
            for index, ref_layer in enumerate(reference.layers):
                empty = ref_layer.keys[0, :, :0]
                keys, past_mask = left_pad([empty if c is None else c.layers[index].keys[0] for c in caches], dim=1)
                values, _ = left_pad([empty if c is None else c.layers[index].values[0] for c in caches], dim=1)
                layers.append((keys, values))
            cache = DynamicCache(ddp_cache_data=layers)
            mask = torch.cat([past_mask, mask], dim=1)
        out = self.model.network(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **{self._cache_arg: cache})
        self.forward_passes += 1
        merged = _cache_of(out)
        for i, seq in enumerate(batch):
            real = mask[i].nonzero()[:, 0]
            own = DynamicCache(ddp_cache_data=[(layer.keys[i : i + 1, :, real], layer.values[i : i + 1, :, real])
                                               for layer in merged.layers])
            seq.advance(out.logits[i, -1].float(), own)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        seq = self.start(request)
        while not seq.finished:
            if should_stop is not None and should_stop():
                return
            self.step([seq])
            yield from seq.drain()


def _cache_of(out: Any) -> Any:
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _plain_dynamic_cache(config: Any) -> bool:
    """Whether the model's cache is all plain ``DynamicLayer``s, whose tensors can be padded and split."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except (AttributeError, KeyError, TypeError, ValueError):  # a config it cannot read layer types from
        return False
    return all(type(layer) is DynamicLayer for layer in layers)
