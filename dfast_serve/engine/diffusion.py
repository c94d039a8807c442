"""Masked-diffusion generation that streams a growing, final prefix.

The answer starts as ``max_tokens`` mask tokens after the prompt; each step runs one forward pass,
proposes a token for every masked position it scored, and *commits* some of them; a committed
token never changes (``diffusion_sequence``: the per-request state and decisions).

``DiffusionEngine.step`` = plan (each sequence's canvas slice: whole, or part of it against the
block-wise KV cache, ``kv_cache``) → forward (sequences share passes, left-padded, ``batching``)
→ postprocess (each sequence's ``advance``: propose, commit, stream). The pass budget
(``budget``) and the block schedule (``schedule``) say how many passes a block may spend; the
ultra-fast options add the instant reveal, confidence streaming, the stall fallback and early
stop on top; with all of them off it is exactly the standard path.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from dfast_serve.engine.batching import left_pad, split_into
from dfast_serve.engine.budget import PassBudget
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.diffusion_sequence import DiffusionSequence
from dfast_serve.engine.kv_cache import BlockCache, ForwardPlan, stack_contexts
from dfast_serve.engine.options import DiffusionOptions
from dfast_serve.engine.sampling import make_generator
from dfast_serve.engine.sequence import generate_alone
from dfast_serve.engine.types import GenerationRequest, StreamingChunk
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.tensor_types import KeyValues


class DiffusionEngine:
    """Runs diffusion sequences on one model. ``forward_passes`` counts every pass it makes;
    ``max_batch_size`` bounds how many sequences ``step`` puts in one pass."""

    kind = "diffusion"

    def __init__(self, model: DiffusionLM, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.forward_passes = 0

    def start(self, request: GenerationRequest) -> DiffusionSequence:
        options = request.diffusion or DiffusionOptions()
        gen_len = request.params.max_tokens
        if gen_len < 1:
            raise ValueError("max_tokens must be at least 1")
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        total = len(request.prompt_ids) + gen_len
        if total > self.model.max_context:
            raise ValueError(f"prompt ({len(request.prompt_ids)}) + max_tokens ({gen_len}) exceeds the context "
                             f"({self.model.max_context})")
        device = self.model.device
        canvas = torch.tensor(list(request.prompt_ids) + [self.model.mask_token_id] * gen_len,
                              dtype=torch.long, device=device)
        use_cache = options.cache != "none" and self.model.kv_cache
        return DiffusionSequence(
            request=request,
            detokenizer=StreamingDetokenizer(self.model.tokenizer, request.params.stop),
            eos_ids=self.model.eos_token_ids,
            generator=make_generator(request.params.seed, device),
            options=options,
            canvas=canvas,
            prompt_len=len(request.prompt_ids),
            budget=PassBudget.for_request(options, gen_len),
            kv=BlockCache(dual=options.cache == "dual") if use_cache else None,
        )

    def step(self, sequences: list[DiffusionSequence]) -> None:
        """One denoising step for each sequence, sharing forward passes (``max_batch_size`` a pass,
        left-padded; for a model without ``padded_batches``, only slices of equal length share one).
        A pass that fails for a group is retried per sequence, so an error ends only the request
        that causes it."""
        plans = [seq.forward_plan() for seq in sequences]
        if self.model.padded_batches:
            groups = split_into(list(range(len(plans))), self.max_batch_size)
        else:
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, plan in enumerate(plans):
                by_shape.setdefault((plan.end - plan.start, plan.context_len), []).append(i)
            groups = [group for same in by_shape.values() for group in split_into(same, self.max_batch_size)]
        for group in groups:
            batch, batch_plans = [sequences[i] for i in group], [plans[i] for i in group]
            try:
                logits, kv = self._forward(batch, batch_plans)
            except Exception as exc:  # noqa: BLE001 - isolate the sequence that causes it
                if len(batch) == 1:
                    batch[0].fail(exc)
                    continue
                for seq, plan in zip(batch, batch_plans):
                    try:
                        self._postprocess([seq], [plan], *self._forward([seq], [plan]))
                    except Exception as alone_exc:  # noqa: BLE001
                        seq.fail(alone_exc)
                continue
            self._postprocess(batch, batch_plans, logits, kv)

    def _forward(self, batch: list[DiffusionSequence], plans: list[ForwardPlan]
                 ) -> tuple[torch.Tensor, list[KeyValues] | None]:
        """One forward pass for ``batch``: logits (batch, longest slice, vocab), and keys/values when cached."""
        device = self.model.device
        ids, mask = left_pad([seq.canvas[p.start : p.end] for seq, p in zip(batch, plans)],
                             value=self.model.mask_token_id)
        self.forward_passes += 1
        if any(p.context is not None or p.refresh for p in plans):
            positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
            return self._cached_forward(ids, positions, mask, plans)
        if bool(mask.all()):
            return self.model.logits(ids), None  # every canvas starts at position 0: nothing to pad or shift
        positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
        return self.model.logits(ids, mask, positions), None

    def _postprocess(self, batch: list[DiffusionSequence], plans: list[ForwardPlan], logits: torch.Tensor,
                     kv: list[KeyValues] | None) -> None:
        """Each sequence's step from its rows of the pass; one that fails ends alone."""
        for i, (seq, plan) in enumerate(zip(batch, plans)):
            try:
                if plan.refresh:
                    n = plan.end - plan.start
                    seq.keep_kv([(k[i, :, -n:], v[i, :, -n:]) for k, v in kv])
                first = max(plan.start, seq.prompt_len)  # the first answer position the pass computed
                window = logits[i, logits.shape[1] - (plan.end - first) :]
                window[:, self.model.mask_token_id] = -torch.inf  # the mask is never a valid answer token
                seq.advance(window, first - seq.prompt_len)
            except Exception as exc:  # noqa: BLE001 - reported to this request alone
                seq.fail(exc)

    def _cached_forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, plans: list[ForwardPlan]
    ) -> tuple[torch.Tensor, list[KeyValues]]:
        """A pass that attends to each sequence's cached context and returns keys/values."""
        past, context_mask = stack_contexts([p.context for p in plans])
        if past is not None:
            mask = torch.cat([context_mask, mask], dim=1)
        return self.model.logits_and_kv(ids, positions, None if bool(mask.all()) else mask, past)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        """Stream one request's chunks as its prefix grows. ``should_stop`` is polled before every step."""
        return generate_alone(self, request, should_stop)
