"""Masked-diffusion generation that streams a growing, final prefix.

The answer starts as ``max_tokens`` mask tokens after the prompt; each step runs one forward pass,
proposes a token for every masked position it scored, and *commits* some of them; a committed
token never changes (``sequence.py``: the per-request state and decisions).

``MaskedDiffusion`` is the family the engine core runs (``core.py``): ``schedule`` = plan (each
sequence's canvas slice: whole, or part of it against the block-wise KV cache, ``kv_cache``), fair
turns within the step's token budget, packing into passes → ``forward`` (sequences share passes,
left-padded, ``batching``) → ``advance`` (each sequence's own: propose, commit, stream). The pass budget
(``budget``) and the block schedule (``schedule``) say how many passes a block may spend; the
ultra-fast options add the instant reveal, confidence streaming, the stall fallback and early
stop on top; with all of them off it is exactly the standard path.

A pass that costs more than twice ``pass_piece_tokens`` runs in pieces, one a step (``PIECE`` passes): its
forward a block of rows of one layer at a time (``BidirectionalLM.pieces``), then its sampling a few
positions at a time (``proposal.propose_pieces``); other requests' passes run between its pieces, so
none waits on a whole long pass; and a new request's first pass, unless long, goes first.
"""

from __future__ import annotations

from typing import Iterator

import torch

from dfast_serve.engine.batching import left_pad, split_into
from dfast_serve.engine.masked.budget import PassBudget
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.core import Pass
from dfast_serve.engine.limits import EngineLimits, check_context, check_prompt
from dfast_serve.engine.masked.sequence import DiffusionSequence
from dfast_serve.engine.masked.fixed_shape import PassShape, assemble
from dfast_serve.engine.masked.kv_cache import BlockCache, ForwardPlan, stack_contexts
from dfast_serve.wire import BatchInvariance, DiffusionOptions, bad_request
from dfast_serve.engine.sampling import make_generator
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.models.pieces import Pieces, drive
from dfast_serve.wire.tensors import KeyValues


FILTERED_LOGITS_PER_TOKEN = 1024
"""The work of one canvas token's forward pass, in logits sampled with top-k or top-p: a pass that samples
``n`` positions over a ``vocab`` counts ``n * vocab // FILTERED_LOGITS_PER_TOKEN`` canvas tokens beside the
ones it computes. Measured on one CPU thread (``benchmarks/engine/sampling_cost.py``): tiny-mdlm's forward
costs as much per canvas token as top-p sampling and its confidence over ~900-1,300 logits (flat rows, whose
nucleus needs a sort)."""
PLAIN_LOGITS_PER_TOKEN = 32768
"""The same for greedy or plain-temperature sampling (a few passes over each row, no selection): measured
~42,000-85,000 logits per canvas token; counted a little dearer, rounded to a power of two."""
PIECE = "piece"  # the phase of a pass that runs one piece of a long pass


class MaskedDiffusion:
    """The masked-diffusion family on one model. ``max_batch_size`` bounds how many sequences share a
    pass, ``step_token_budget`` the canvas tokens one step computes (a canvas longer than it runs alone),
    ``limits`` the canvas and block sizes a request may ask for.

    ``batch_invariance``: ``off`` pads a pass's rows to its longest slice (a row's low-order bits,
    and in bf16 sometimes its greedy tokens, depend on its mates); ``strict`` runs every pass in the
    fixed padded shape of its bucket (``fixed_shape``), so a request's output is the same whoever
    its mates are. A model without ``padded_batches`` cannot pad: strict then runs one sequence a pass.
    """

    kind = "diffusion"

    def __init__(self, model: DiffusionLM, max_batch_size: int = 8, step_token_budget: int | None = None,
                 batch_invariance: BatchInvariance = "off", limits: EngineLimits = EngineLimits(),
                 pass_piece_tokens: int | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.max_batch_size = max_batch_size
        self.step_token_budget = step_token_budget  # None: every sequence runs every step
        self.batch_invariance = batch_invariance
        self.limits = limits
        self.vocab = 0  # logits per position, learned from the first pass (before it sampling counts nothing)
        # Pieces need a network that runs in pieces, and a pass whose shape is its own (not strict's fixed shapes).
        pieced = pass_piece_tokens is not None and model.pieced and batch_invariance != "strict"
        self.pass_piece_tokens = pass_piece_tokens if pieced else None
        self._piece_rows = 0 if not pieced else pass_piece_tokens * getattr(model.network.config, "num_layers", 1)

    def validate(self, request: GenerationRequest) -> None:
        check_prompt(request)
        options = request.diffusion or DiffusionOptions()
        cap = self.limits.max_block_length
        if cap is not None and options.block_length > cap:
            raise bad_request(f"dfast.block_length {options.block_length} exceeds this model's max_block_length of "
                              f"{cap}", "dfast.block_length")
        limit, why = self.model.max_context, "its context"
        if self.limits.max_canvas_tokens is not None and self.limits.max_canvas_tokens < limit:
            limit, why = self.limits.max_canvas_tokens, "replica.max_canvas_tokens"
        check_context(request, limit, why=why)

    def start(self, request: GenerationRequest) -> DiffusionSequence:
        options = request.diffusion or DiffusionOptions()
        gen_len = request.params.max_tokens
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
            max_draft_tokens=self.limits.max_draft_tokens,
        )

    def schedule(self, sequences: list[DiffusionSequence]) -> Iterator[Pass[DiffusionSequence]]:
        """The step's passes: the sequences whose turn it is (``_turns``), packed (``_passes``); a long pass a
        piece at a time."""
        plans = {id(seq): seq.pass_in_pieces_plan if seq.pass_in_pieces is not None else seq.forward_plan()
                 for seq in sequences}
        chosen = self._turns(sequences, plans)
        pieced = [seq for seq in chosen if self._in_pieces(seq, plans[id(seq)])]
        for seq in pieced:
            yield Pass([seq], [plans[id(seq)]], phase=PIECE)
        for group in self._passes([seq for seq in chosen if seq not in pieced], plans):
            yield Pass(group, [plans[id(seq)] for seq in group], shape=self._pass_shape(group, plans))

    def _cost(self, seq: DiffusionSequence, plan: ForwardPlan) -> int:
        """What the sequence's next pass costs in canvas tokens (its sampling included); a pass in pieces costs
        a piece a step."""
        if seq.pass_in_pieces is not None:
            return self.pass_piece_tokens
        whole = plan.tokens + self.sampling_work(seq, seq.samples_next(plan))
        return self.pass_piece_tokens if self._too_long(whole) else whole

    def _in_pieces(self, seq: DiffusionSequence, plan: ForwardPlan) -> bool:
        """Whether the sequence's pass runs in pieces: it does already, or it is ``_too_long``."""
        return seq.pass_in_pieces is not None or self._too_long(
            plan.tokens + self.sampling_work(seq, seq.samples_next(plan)))

    def _too_long(self, cost: int) -> bool:
        """A pass of this cost runs in pieces: it costs more than two (a pass of up to two runs whole: splitting it
        would only delay its own tokens)."""
        return self.pass_piece_tokens is not None and cost > 2 * self.pass_piece_tokens

    def _pass_shape(self, group: list[DiffusionSequence], plans: dict[int, ForwardPlan]) -> PassShape | None:
        if self.batch_invariance == "strict" and self.model.padded_batches:
            return self._shape(plans[id(group[0])])
        return None

    def _turns(self, sequences: list[DiffusionSequence], plans: dict[int, ForwardPlan]) -> list[DiffusionSequence]:
        """Who runs this step: fair by work (weighted fair queueing). A pass's work is the canvas tokens it
        computes plus the positions it samples (``sampling_work``); each sequence counts its passes' work
        (``work``); a step runs the one whose next pass would finish first (work + cost), and with it those
        that would finish within one short pass of it, as many as fit ``step_token_budget``. Requests of
        similar size thus batch every step, while a long canvas (or one sampling every position) runs
        about once per its cost's worth of a short request's passes, and a short request never waits on
        more than one budget of other work between two of its passes."""
        if self.step_token_budget is None or len(sequences) == 1:
            return sequences
        floor = min((seq.work for seq in sequences if seq.nfe > 0), default=0)
        newcomers = [seq for seq in sequences if seq.nfe == 0 and self.pass_piece_tokens is not None
                     and not self._in_pieces(seq, plans[id(seq)])]
        if newcomers and len(newcomers) < len(sequences):
            # With pieces, a new request's short first pass goes first, in a step of its own: its first tokens wait
            # on no other work than the piece in flight (a long one takes its turns, a piece at a time). That pass
            # is not charged to its turns (it starts at the others' least work less its cost), so from its second
            # pass on it shares steps with requests of its size instead of standing aside to repay it.
            for seq in newcomers:
                if not seq.clocked:
                    seq.work = max(seq.work, floor - self._cost(seq, plans[id(seq)]))
                    seq.clocked = True
            sequences = newcomers
        for seq in sequences:
            if seq.nfe == 0 and not seq.clocked:
                # A newcomer does not get the backlog of everyone's past passes; once only, or one that
                # has not run yet would be raised to the others' work every step and never catch up.
                seq.work, seq.clocked = max(seq.work, floor), True
        cost = {id(seq): self._cost(seq, plans[id(seq)]) for seq in sequences}

        def finish(seq: DiffusionSequence) -> int:
            return seq.work + cost[id(seq)]

        ordered = sorted(sequences, key=finish)
        horizon = finish(ordered[0]) + min(cost.values())
        chosen, used = [], 0
        for seq in ordered:
            if chosen and (finish(seq) > horizon or used + cost[id(seq)] > self.step_token_budget):
                continue
            chosen.append(seq)
            used += cost[id(seq)]
        return chosen

    def sampling_work(self, seq: DiffusionSequence, positions: int) -> int:
        """``seq`` sampling ``positions`` over the vocabulary, in canvas tokens: at ``FILTERED_LOGITS_PER_TOKEN``
        with top-k or top-p at a temperature above 0, else at ``PLAIN_LOGITS_PER_TOKEN``."""
        return positions * self.vocab // self._logits_per_token(seq)

    def _logits_per_token(self, seq: DiffusionSequence) -> int:
        """Sampled logits that cost one canvas token for ``seq``'s sampling."""
        params = seq.request.params
        filtered = params.temperature > 0 and (0 < params.top_k < self.vocab or params.top_p < 1.0)
        return FILTERED_LOGITS_PER_TOKEN if filtered else PLAIN_LOGITS_PER_TOKEN

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

    def forward(self, pass_: Pass[DiffusionSequence]) -> tuple[torch.Tensor, list[KeyValues] | None] | None:
        """One forward pass: logits (batch, longest slice, vocab), and keys/values when cached. A ``PIECE`` pass
        runs the next piece of its sequence's pass (starting it if need be) and returns None."""
        if pass_.phase == PIECE:
            seq = pass_.sequences[0]
            if seq.pass_in_pieces is None:
                seq.pass_in_pieces, seq.pass_in_pieces_plan = self._pass_in_pieces(seq, pass_.plan(0)), pass_.plan(0)
            try:
                next(seq.pass_in_pieces)
            except StopIteration:
                seq.pass_in_pieces = seq.pass_in_pieces_plan = None
            return None
        if pass_.shape is not None:
            return self._fixed_forward(pass_.sequences, pass_.plans, pass_.shape)
        return drive(self._forward_pieces(pass_.sequences, pass_.plans, None))

    def _pass_in_pieces(self, seq: DiffusionSequence, plan: ForwardPlan) -> Pieces[None]:
        """One whole pass of ``seq`` (forward, then advance), yielding between pieces of ``pass_piece_tokens``."""
        output = yield from self._forward_pieces([seq], [plan], self._piece_rows)
        yield
        self.vocab = output[0].shape[-1]
        rows = self.pass_piece_tokens * self._logits_per_token(seq) // self.vocab
        yield from self._advance_pieces(seq, 0, output, plan, max(1, rows))

    def _forward_pieces(self, batch: list[DiffusionSequence], plans: list[ForwardPlan], rows: int | None
                        ) -> Pieces[tuple[torch.Tensor, list[KeyValues] | None]]:
        """The forward pass of ``batch``, in pieces of ``rows`` rows of a layer (None: whole)."""
        device = self.model.device
        ids, mask = left_pad([seq.canvas[p.start : p.end] for seq, p in zip(batch, plans)],
                             value=self.model.mask_token_id)
        # Only the answer positions are scored: a model that can skips the prompt's logits.
        keep = max(p.end - max(p.start, seq.prompt_len) for seq, p in zip(batch, plans))
        if any(p.context is not None or p.refresh for p in plans):
            positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
            past, context_mask = stack_contexts([p.context for p in plans])
            if past is not None:
                mask = torch.cat([context_mask, mask], dim=1)
            return (yield from self._model_pass(rows, ids, None if bool(mask.all()) else mask, positions, past, keep,
                                                return_kv=True))
        if bool(mask.all()):  # every canvas starts at position 0: nothing to pad or shift
            return (yield from self._model_pass(rows, ids, None, None, None, keep))
        positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
        return (yield from self._model_pass(rows, ids, mask, positions, None, keep))

    def _model_pass(self, rows: int | None, ids: torch.Tensor, mask: torch.Tensor | None,
                    positions: torch.Tensor | None, past: list[KeyValues] | None, keep: int, return_kv: bool = False
                    ) -> Pieces[tuple[torch.Tensor, list[KeyValues] | None]]:
        """The model's pass: whole (``rows`` None: the adapter's plain calls), or in pieces."""
        if rows is not None:
            return (yield from self.model.logits_pieces(rows, ids, mask, positions, past, keep, return_kv))
        if return_kv:
            return self.model.logits_and_kv(ids, positions, mask, past, keep=keep)
        return self.model.logits(ids, mask, positions, keep=keep), None

    def _shape(self, plan: ForwardPlan) -> PassShape:
        return PassShape.of(plan, self.max_batch_size, self.step_token_budget)

    def _fixed_forward(self, batch: list[DiffusionSequence], plans: list[ForwardPlan], shape: PassShape
                       ) -> tuple[torch.Tensor, list[KeyValues] | None]:
        """A pass in its bucket's fixed shape: always masked, positioned, untrimmed and (with a cache)
        returning keys/values, so that nothing about it depends on which rows share it."""
        fixed = assemble(shape, [seq.canvas[p.start : p.end] for seq, p in zip(batch, plans)], plans,
                         self.model.mask_token_id, self.model.device)
        if self.model.kv_cache:
            return self.model.logits_and_kv(fixed.ids, fixed.positions, fixed.mask, fixed.past)
        return self.model.logits(fixed.ids, fixed.mask, fixed.positions), None

    def advance(self, seq: DiffusionSequence, row: int, output: tuple[torch.Tensor, list[KeyValues] | None] | None,
                pass_: Pass[DiffusionSequence]) -> None:
        """The sequence's step from its row of the pass (a piece: its work; the pass advances it when it ends)."""
        if pass_.phase == PIECE:
            seq.work += self.pass_piece_tokens
            return
        drive(self._advance_pieces(seq, row, output, pass_.plan(row), None))
        seq.work += pass_.plan(row).tokens + self.sampling_work(seq, seq.sampled)

    def _advance_pieces(self, seq: DiffusionSequence, row: int, output: tuple[torch.Tensor, list[KeyValues] | None],
                        plan: ForwardPlan, rows: int | None) -> Pieces[None]:
        """Keep the row's keys/values if the plan refreshes the cache, then propose (in pieces of ``rows``
        positions), commit and stream on the answer positions the pass scored."""
        logits, kv = output
        self.vocab = logits.shape[-1]
        if plan.refresh:
            n = plan.end - plan.start
            seq.keep_kv([(k[row, :, -n:], v[row, :, -n:]) for k, v in kv])
        first = max(plan.start, seq.prompt_len)  # the first answer position the pass computed
        window = logits[row, logits.shape[1] - (plan.end - first) :]
        window[:, self.model.mask_token_id] = -torch.inf  # the mask is never a valid answer token
        yield from seq.advance_pieces(window, first - seq.prompt_len, rows)
