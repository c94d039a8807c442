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
from dfast_serve.engine.fixed_shape import PassShape, assemble
from dfast_serve.engine.kv_cache import BlockCache, ForwardPlan, stack_contexts
from dfast_serve.engine.options import BatchInvariance, DiffusionOptions
from dfast_serve.engine.sampling import make_generator
from dfast_serve.engine.sequence import generate_alone
from dfast_serve.engine.types import GenerationRequest, StreamingChunk
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.tensor_types import KeyValues


class DiffusionEngine:
    """Runs diffusion sequences on one model. ``forward_passes`` counts every pass it makes;
    ``max_batch_size`` bounds how many sequences ``step`` puts in one pass, ``step_token_budget`` the
    canvas tokens one step computes (a canvas longer than it runs alone).

    ``batch_invariance``: ``off`` pads a pass's rows to its longest slice (a row's low-order bits,
    and in bf16 sometimes its greedy tokens, depend on its mates); ``strict`` runs every pass in the
    fixed padded shape of its bucket (``fixed_shape``), so a request's output is the same whoever
    its mates are. A model without ``padded_batches`` cannot pad: strict then runs one sequence a pass.
    """

    kind = "diffusion"

    def __init__(self, model: DiffusionLM, max_batch_size: int = 8, step_token_budget: int | None = None,
                 batch_invariance: BatchInvariance = "off") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.step_token_budget = step_token_budget  # None: every sequence runs every step
        self.batch_invariance = batch_invariance
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
            kv=BlockCache(dual=options.cache == "dual", lead=int(self.model.shift_logits)) if use_cache else None,
        )

    def step(self, sequences: list[DiffusionSequence]) -> None:
        """One denoising step for the sequences whose turn it is (``_turns``), sharing forward passes
        (``_passes``). A pass that fails for a group is retried per sequence, so an error ends only
        the request that causes it."""
        plans = {id(seq): seq.forward_plan() for seq in sequences}
        for group in self._passes(self._turns(sequences, plans), plans):
            batch_plans = [plans[id(seq)] for seq in group]
            try:
                logits, kv = self._forward(group, batch_plans)
            except Exception as exc:  # noqa: BLE001 - isolate the sequence that causes it
                if len(group) == 1:
                    group[0].fail(exc)
                    continue
                for seq, plan in zip(group, batch_plans):
                    try:
                        self._postprocess([seq], [plan], *self._forward([seq], [plan]))
                    except Exception as alone_exc:  # noqa: BLE001
                        seq.fail(alone_exc)
                continue
            self._postprocess(group, batch_plans, logits, kv)

    def _turns(self, sequences: list[DiffusionSequence], plans: dict[int, ForwardPlan]) -> list[DiffusionSequence]:
        """Who runs this step: fair by canvas tokens (weighted fair queueing). Each sequence counts the
        canvas tokens its passes computed (``work``); a step runs the one whose next pass would finish
        first (work + cost), and with it those that would finish within one short pass of it, as many
        as fit ``step_token_budget``. Requests of similar size thus batch every step, while a long
        canvas runs about once per its length's worth of a short request's passes, and a short request
        never waits on more than one budget of other work between two of its passes."""
        if self.step_token_budget is None or len(sequences) == 1:
            return sequences
        floor = min((seq.work for seq in sequences if seq.nfe > 0), default=0)
        for seq in sequences:
            if seq.nfe == 0:
                seq.work = max(seq.work, floor)  # a newcomer does not get the backlog of everyone's past passes

        def finish(seq: DiffusionSequence) -> int:
            return seq.work + plans[id(seq)].tokens

        ordered = sorted(sequences, key=finish)
        horizon = finish(ordered[0]) + min(plans[id(s)].tokens for s in sequences)
        chosen, used = [], 0
        for seq in ordered:
            cost = plans[id(seq)].tokens
            if chosen and (finish(seq) > horizon or used + cost > self.step_token_budget):
                continue
            chosen.append(seq)
            used += cost
        return chosen

    def _passes(self, chosen: list[DiffusionSequence], plans: dict[int, ForwardPlan]) -> list[list[DiffusionSequence]]:
        """Forward passes for the step, shortest slices first: up to ``max_batch_size`` rows, and (with a
        budget) rows × longest slice within it, so a long canvas never pads the short ones; full passes
        apart from cached slices; a model without ``padded_batches`` shares a pass only among slices of
        equal shape. Strict batch invariance: rows of one bucket (``_shape``) per pass, as many as it holds."""
        if self.batch_invariance == "strict":
            if not self.model.padded_batches:
                return [[seq] for seq in chosen]
            by_bucket: dict[PassShape, list[DiffusionSequence]] = {}
            for seq in sorted(chosen, key=lambda s: plans[id(s)].tokens):
                by_bucket.setdefault(self._shape(plans[id(seq)]), []).append(seq)
            return [group for shape, same in by_bucket.items() for group in split_into(same, shape.rows)]
        if not self.model.padded_batches:
            by_shape: dict[tuple[int, int], list[DiffusionSequence]] = {}
            for seq in chosen:
                plan = plans[id(seq)]
                by_shape.setdefault((plan.tokens, plan.context_len), []).append(seq)
            return [group for same in by_shape.values() for group in split_into(same, self.max_batch_size)]
        budget = self.step_token_budget
        passes: list[list[DiffusionSequence]] = []
        for seq in sorted(chosen, key=lambda s: plans[id(s)].tokens):
            cost = plans[id(seq)].tokens  # the longest so far: sorted
            current = passes[-1] if passes else None
            # Full passes and cached slices run apart: one full canvas would pad every slice to its length.
            full = plans[id(seq)].context is None
            if current is None or len(current) >= self.max_batch_size or full != (plans[id(current[-1])].context is None) or (
                    budget is not None and (len(current) + 1) * cost > budget):
                passes.append([seq])
            else:
                current.append(seq)
        return passes

    def _forward(self, batch: list[DiffusionSequence], plans: list[ForwardPlan]
                 ) -> tuple[torch.Tensor, list[KeyValues] | None]:
        """One forward pass for ``batch``: logits (batch, longest slice, vocab), and keys/values when cached."""
        device = self.model.device
        if self.batch_invariance == "strict" and self.model.padded_batches:
            return self._fixed_forward(batch, plans)
        ids, mask = left_pad([seq.canvas[p.start : p.end] for seq, p in zip(batch, plans)],
                             value=self.model.mask_token_id)
        self.forward_passes += 1
        # Only the answer positions are scored: a model that can skips the prompt's logits.
        keep = max(p.end - max(p.start, seq.prompt_len) for seq, p in zip(batch, plans))
        if any(p.context is not None or p.refresh for p in plans):
            positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
            return self._cached_forward(ids, positions, mask, plans, keep)
        if bool(mask.all()):
            return self.model.logits(ids, keep=keep), None  # every canvas starts at position 0: nothing to pad or shift
        positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
        return self.model.logits(ids, mask, positions, keep=keep), None

    def _shape(self, plan: ForwardPlan) -> PassShape:
        return PassShape.of(plan, self.max_batch_size, self.step_token_budget)

    def _fixed_forward(self, batch: list[DiffusionSequence], plans: list[ForwardPlan]
                       ) -> tuple[torch.Tensor, list[KeyValues] | None]:
        """A pass in its bucket's fixed shape: always masked, positioned, untrimmed and (with a cache)
        returning keys/values, so that nothing about it depends on which rows share it."""
        shape = self._shape(plans[0])
        fixed = assemble(shape, [seq.canvas[p.start : p.end] for seq, p in zip(batch, plans)], plans,
                         self.model.mask_token_id, self.model.device)
        self.forward_passes += 1
        if self.model.kv_cache:
            return self.model.logits_and_kv(fixed.ids, fixed.positions, fixed.mask, fixed.past)
        return self.model.logits(fixed.ids, fixed.mask, fixed.positions), None

    def _postprocess(self, batch: list[DiffusionSequence], plans: list[ForwardPlan], logits: torch.Tensor,
                     kv: list[KeyValues] | None) -> None:
        """Each sequence's step from its rows of the pass; one that fails ends alone."""
        for i, (seq, plan) in enumerate(zip(batch, plans)):
            seq.work += plan.tokens
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
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, plans: list[ForwardPlan], keep: int
    ) -> tuple[torch.Tensor, list[KeyValues]]:
        """A pass that attends to each sequence's cached context and returns keys/values."""
        past, context_mask = stack_contexts([p.context for p in plans])
        if past is not None:
            mask = torch.cat([context_mask, mask], dim=1)
        return self.model.logits_and_kv(ids, positions, None if bool(mask.all()) else mask, past, keep=keep)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        """Stream one request's chunks as its prefix grows. ``should_stop`` is polled before every step."""
        return generate_alone(self, request, should_stop)
