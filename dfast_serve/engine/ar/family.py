"""Autoregressive generation with a KV cache: one prefill, then one forward pass per token.

Every token is streamed the moment it is decoded (subject only to the detokenizer's UTF-8 and
stop-string hold-back): the first chunk leaves right after the prefill pass that produces it.

``Autoregressive`` is the family the engine core runs (``core.py``): ``schedule`` puts up to
``max_batch_size`` sequences in a pass, each at its own point (prefill or decode); ``forward`` lays
their new tokens out left-padded with an attention mask and explicit position ids, and the model
adapter (``models/causal_lm.py``) stacks their caches, runs the pass and hands each row its own cache
back. A model whose cache cannot be stacked runs its sequences one per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine.ar.shape import ArShape, layout
from dfast_serve.engine.batching import left_pad, split_into
from dfast_serve.engine.core import Pass
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.limits import check_context, check_prompt
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sampling import choose_tokens, make_generator
from dfast_serve.engine.sequence import Sequence
from dfast_serve.models.causal_lm import CausalLM
from dfast_serve.wire import BatchInvariance

PassOutput = tuple[torch.Tensor, Callable[[int], Any]]  # rows' last logits (rows, vocab), row -> its cache


@dataclass(eq=False)
class ARSequence(Sequence):
    """One request's next input, KV cache (the adapter's, opaque here) and count of generated tokens."""

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


class Autoregressive:
    """The AR family on one causal LM. ``max_batch_size`` bounds how many sequences share a pass.

    ``batch_invariance="strict"`` keeps a sequence's output independent of who else is running: with a
    stackable cache, every pass has the fixed shape of its bucket (``shape.ArShape``: prefill or decode,
    key columns bucketed, dummy rows up to ``max_batch_size``); without one, sequences already run one
    per pass, at shapes of their own.
    """

    kind = "ar"

    def __init__(self, model: CausalLM, max_batch_size: int = 8, batch_invariance: BatchInvariance = "off") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.batch_invariance = batch_invariance
        self.max_batch_size = max_batch_size
        self._fixed = batch_invariance == "strict" and model.merges_caches

    def validate(self, request: GenerationRequest) -> None:
        check_prompt(request)
        check_context(request, self.model.max_context)

    def start(self, request: GenerationRequest) -> ARSequence:
        device = self.model.device
        return ARSequence(
            request=request,
            detokenizer=StreamingDetokenizer(self.model.tokenizer, request.params.stop),
            eos_ids=self.model.eos_token_ids,
            generator=make_generator(request.params.seed, device),
            next_input=torch.tensor([request.prompt_ids], dtype=torch.long, device=device),
        )

    def schedule(self, sequences: list[ARSequence]) -> Iterator[Pass[ARSequence]]:
        """Prefill (first step) or decode one token, for each sequence: ``max_batch_size`` a pass; strict
        batch invariance: sequences of one ``ArShape`` per pass, at most its rows."""
        if self._fixed:
            by_shape: dict[ArShape, list[ARSequence]] = {}
            for seq in sequences:
                by_shape.setdefault(self._shape(seq), []).append(seq)
            for shape, same in by_shape.items():
                for batch in split_into(same, shape.rows):
                    yield Pass(batch, shape=shape)
            return
        size = self.max_batch_size if self.model.merges_caches else 1
        for batch in split_into(sequences, size):
            yield Pass(batch)

    def forward(self, pass_: Pass[ARSequence]) -> PassOutput:
        batch, shape = pass_.sequences, pass_.shape
        if shape is None and len(batch) == 1:
            seq = batch[0]
            logits, cache = self.model.forward_alone(seq.next_input, seq.past_key_values)
            return logits[None], lambda row: cache
        device = self.model.device
        inputs = [s.next_input[0] for s in batch]
        past_lens = [self.model.cache_length(s.past_key_values) for s in batch]
        if shape is not None:  # [cache padding | cache | input padding | input], fixed columns and rows
            ids, positions, mask = layout(inputs, past_lens, shape, device)
            columns, rows = shape.past, shape.rows
        else:  # the same, padded to the longest cache and input
            ids, input_mask = left_pad(inputs)
            positions, _ = left_pad([torch.arange(p, p + len(t), device=device) for p, t in zip(past_lens, inputs)])
            columns, rows = max(past_lens), len(batch)
            past_mask = torch.zeros((rows, columns), dtype=torch.long, device=device)
            for i, past in enumerate(past_lens):
                past_mask[i, columns - past :] = 1
            mask = torch.cat([past_mask, input_mask], dim=1)
        cache = self.model.stack_caches([s.past_key_values for s in batch], past_lens, columns, rows)
        return self.model.forward_batch(ids, positions, mask, cache)

    @torch.inference_mode()  # the logits are inference tensors: their processors work on them in place
    def advance(self, seq: ARSequence, row: int, output: PassOutput, pass_: Pass[ARSequence]) -> None:
        logits, row_cache = output
        seq.advance(logits[row], row_cache(row))

    def _shape(self, seq: ARSequence) -> ArShape:
        return ArShape.of(self.model.cache_length(seq.past_key_values), seq.next_input.shape[1], self.max_batch_size)
