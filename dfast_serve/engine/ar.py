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
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine.batching import left_pad, split_into
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.fixed_shape import ArShape, assemble_ar
from dfast_serve.engine.options import BatchInvariance
from dfast_serve.engine.sampling import choose_tokens, make_generator
from dfast_serve.engine.sequence import Sequence, generate_alone
from dfast_serve.engine.types import GenerationRequest, StreamingChunk
from dfast_serve.models.adapters import CausalLM


@dataclass(eq=False)
class ARSequence(Sequence):
    """One request's next input, KV cache and count of generated tokens."""

    next_input: torch.Tensor  # (1, n): the prompt before prefill, then the last sampled token
    past_key_values: Any = None
    generated: int = 0

    def progress(self) -> float:
        return self.generated / self.target_tokens

    def advance(self, last_logits: torch.Tensor, past_key_values: Any) -> None:
        """Take the logits of the last position, choose the next token and stream it."""
        params = self.request.params
        self.nfe += 1
        self.past_key_values = past_key_values
        self.shape_logits(last_logits, self.generated)
        token = int(choose_tokens(last_logits, params.temperature, self.generator, params.top_k, params.top_p))
        self.next_input = torch.tensor([[token]], device=self.next_input.device)
        if token not in self.eos_ids:
            self.generated += 1
        self.emit([token], exhausted=self.generated >= params.max_tokens)


class AREngine:
    """Runs AR sequences on one causal LM. ``forward_passes`` counts every pass it makes;
    ``max_batch_size`` bounds how many sequences ``step`` puts in one pass.

    ``batch_invariance="strict"`` keeps a sequence's output independent of who else is running: with a
    mergeable cache, every pass has the fixed shape of its bucket (``fixed_shape.ArShape``: prefill or
    decode, key columns bucketed, dummy rows up to ``max_batch_size``); without one, sequences already run
    one per pass, at shapes of their own.
    """

    kind = "ar"

    def __init__(self, model: CausalLM, max_batch_size: int = 8, batch_invariance: BatchInvariance = "off") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.batch_invariance = batch_invariance
        self.max_batch_size = max_batch_size
        self.forward_passes = 0
        # transformers 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`.
        params = inspect.signature(model.network.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Only the last position's logits are ever read: without this the LM head runs on every
        # prompt position at prefill (SmolLM2: 49K-vocab projection per token, ~1/5 of the pass).
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._mergeable = _plain_dynamic_cache(model.network.config)
        self._fixed = batch_invariance == "strict" and self._mergeable

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
            detokenizer=StreamingDetokenizer(self.model.tokenizer, request.params.stop),
            eos_ids=self.model.eos_token_ids,
            generator=make_generator(request.params.seed, device),
            next_input=torch.tensor([request.prompt_ids], dtype=torch.long, device=device),
        )

    @torch.inference_mode()
    def step(self, sequences: list[ARSequence]) -> None:
        """Prefill (first call) or decode one token, for each sequence: ``max_batch_size`` a pass.
        A batch whose pass fails is retried one sequence at a time, so an error ends only the
        request that causes it."""
        if self._fixed:
            self._fixed_step(sequences)
            return
        for batch in split_into(sequences, self.max_batch_size):
            if len(batch) > 1 and self._mergeable:
                try:
                    self._run_batch(batch)
                    continue
                except Exception:  # noqa: BLE001 - the pass failed before any sequence moved: retry each alone
                    pass
            for seq in batch:
                try:
                    out = self.model.network(input_ids=seq.next_input, use_cache=True, **self._last_logits,
                                             **{self._cache_arg: seq.past_key_values})
                    self.forward_passes += 1
                    seq.advance(out.logits[0, -1].float(), _cache_of(out))
                except Exception as exc:  # noqa: BLE001 - reported to this request alone
                    seq.fail(exc)

    def _fixed_step(self, sequences: list[ARSequence]) -> None:
        """Strict batch invariance: sequences of one ``ArShape`` share a pass of exactly that shape
        (``fixed_shape.ArShape``); a pass that fails is retried per sequence, in the same shape."""
        by_shape: dict[ArShape, list[ARSequence]] = {}
        for seq in sequences:
            by_shape.setdefault(self._shape(seq), []).append(seq)
        for shape, same in by_shape.items():
            for batch in split_into(same, shape.rows):
                try:
                    self._run_batch(batch, shape)
                    continue
                except Exception:  # noqa: BLE001 - the pass failed before any sequence moved: retry each alone
                    pass
                for seq in batch:
                    try:
                        self._run_batch([seq], shape)
                    except Exception as exc:  # noqa: BLE001 - reported to this request alone
                        seq.fail(exc)

    def _shape(self, seq: ARSequence) -> ArShape:
        past = 0 if seq.past_key_values is None else seq.past_key_values.get_seq_length()
        return ArShape.of(past, seq.next_input.shape[1], self.max_batch_size)

    def _run_batch(self, batch: list[ARSequence], shape: ArShape | None = None) -> None:
        """One pass for sequences at different points: [cache padding | cache | input padding | input] per
        row, padded to the longest, or (strict) to ``shape`` with dummy rows."""
        from transformers import DynamicCache

        device = self.model.device
        past_lens = [0 if s.past_key_values is None else s.past_key_values.get_seq_length() for s in batch]
        if shape is not None:
            ids, positions, mask, layers = assemble_ar(shape, [s.next_input[0] for s in batch], past_lens,
                                                       [s.past_key_values for s in batch], device)
            cache = DynamicCache(ddp_cache_data=layers) if layers else None
            self._pass(batch, ids, positions, mask, cache)
            return
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
        self._pass(batch, ids, positions, mask, cache)

    def _pass(self, batch: list[ARSequence], ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
              cache: Any) -> None:
        """Run the network on a merged batch; each sequence takes its row's logits and its real cache entries."""
        from transformers import DynamicCache

        out = self.model.network(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **self._last_logits, **{self._cache_arg: cache})
        self.forward_passes += 1
        merged = _cache_of(out)
        for i, seq in enumerate(batch):
            try:
                real = mask[i].nonzero()[:, 0]
                own = DynamicCache(ddp_cache_data=[(layer.keys[i : i + 1, :, real], layer.values[i : i + 1, :, real])
                                                   for layer in merged.layers])
                seq.advance(out.logits[i, -1].float(), own)
            except Exception as exc:  # noqa: BLE001 - reported to this request alone
                seq.fail(exc)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        return generate_alone(self, request, should_stop)


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
