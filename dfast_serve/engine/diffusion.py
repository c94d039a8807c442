"""Masked-diffusion generation that streams a growing, final prefix.

The answer starts as ``max_tokens`` mask tokens after the prompt and is decided in
semi-autoregressive blocks of ``block_length``: each step runs one forward pass over the whole
sequence, proposes a token for every masked position, and *commits* some of them (LLaDA's
low-confidence remasking keeps the most confident; random remasking picks at random). A
committed token never changes.

Streaming in reading order: tokens are often decided out of order (the end-of-text padding at
the tail is usually the most confident of all). The sequence keeps a *cursor*, the first
undecided answer position; only tokens before it are handed to the detokenizer and sent.
Tokens decided past the cursor are held back until every token before them is decided, so the
client sees an append-only prefix. Nothing after the first EOS is ever sent.

The ultra-fast scheduler (``DiffusionOptions.ultra_fast``) changes only *which* positions a step
commits: an instant first reveal after one forward pass, a front-loaded step schedule,
confidence streaming of leading tokens, a stall fallback and early stop. Each policy is a
method of ``DiffusionSequence`` below; with all of them off it is exactly the standard path.

Threshold decoding (``decoding: "threshold"``, Fast-dLLM's parallel decoding) replaces only the
per-step *count* of the block schedule: a step commits every masked token of the current block
whose confidence reaches ``threshold``, at least the most confident one, and the rest on the
block's last budgeted step (so ``steps``, and ultra-fast's ``max_steps``, still bound the passes).
Under ultra-fast, everything else still applies on top: the instant first reveal, the confident
leading run, the stall fallback and early stop; these keep judging by token probability whatever
``confidence`` says.

Per-request state lives in ``DiffusionSequence``; ``DiffusionEngine.step`` runs one forward pass
for a list of sequences (left-padded into one batch, see ``batching``), each optionally computing
only part of its canvas against a block-wise KV cache (``kv_cache``). A pass that did not score
some answer positions (the dual cache skips the suffix) lets no policy commit there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from dfast_serve.engine.options import DiffusionOptions, UltraFastConfig
from dfast_serve.engine.batching import chunks, left_pad
from dfast_serve.engine.confidence import confidence_of
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.kv_cache import BlockCache, ForwardPlan
from dfast_serve.engine.sampling import choose_tokens, make_generator
from dfast_serve.engine.schedule import front_loaded_schedule, uniform_schedule
from dfast_serve.engine.types import FinishReason, GenerationRequest, StreamingChunk
from dfast_serve.models.adapters import DiffusionLM
from dfast_serve.tensor_types import KeyValues

# After the instant reveal, reveal up to this many more leading tokens if the text is still
# held back (half a UTF-8 character, or a possible stop-string start), so the first chunk has text.
MAX_EXTRA_FIRST_REVEAL = 8


@dataclass
class StepProposal:
    """What one forward pass proposes for every answer position; unscored positions (``known``
    False) have confidence 0 and score -inf."""

    tokens: torch.Tensor  # (gen_len,) proposed token ids
    confidence: torch.Tensor  # (gen_len,) probability of the proposed token
    certainty: torch.Tensor  # (gen_len,) the `confidence` option's measure, met against `threshold`
    score: torch.Tensor  # (gen_len,) ranking used to pick commits (certainty, or random)
    known: torch.Tensor  # (gen_len,) positions this pass scored


@dataclass
class DiffusionSequence:
    """One request's state: canvas, decided positions, block schedule, stream cursor."""

    request: GenerationRequest
    options: DiffusionOptions
    tokens: torch.Tensor
    prompt_len: int
    detokenizer: StreamingDetokenizer
    eos_ids: frozenset[int]
    generator: torch.Generator
    steps_per_block: int
    decided: torch.Tensor = field(init=False)
    started: float = field(default_factory=time.perf_counter)
    nfe: int = 0
    cursor: int = 0  # first undecided answer position
    committed_tokens: int = 0  # answer tokens handed to the detokenizer (EOS excluded)
    block_index: int = 0
    block_step: int = 0
    block_size_at_start: int = 0
    block_schedule: list[int] = field(default_factory=list)
    first_revealed: bool = False
    decided_since_visible: int = 0
    kv: BlockCache | None = None
    finish_reason: FinishReason | None = None
    chunks_sent: int = 0
    pending: list[StreamingChunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.decided = torch.zeros(self.gen_len, dtype=torch.bool, device=self.tokens.device)
        self._start_block()

    # ---- geometry -------------------------------------------------------------------------
    @property
    def gen_len(self) -> int:
        return self.request.params.max_tokens

    @property
    def ultra(self) -> UltraFastConfig | None:
        return self.options.ultra_fast_config if self.options.ultra_fast else None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def block_range(self) -> tuple[int, int]:
        start = self.block_index * self.options.block_length
        return start, min(start + self.options.block_length, self.gen_len)

    def _start_block(self) -> None:
        start, end = self.block_range()
        remaining = int((~self.decided[start:end]).sum())
        self.block_step, self.block_size_at_start = 0, remaining
        use_front_loaded = self.ultra is not None and self.ultra.schedule == "front_loaded"
        plan = front_loaded_schedule if use_front_loaded else uniform_schedule
        self.block_schedule = plan(remaining, self.steps_per_block)

    # ---- one step -------------------------------------------------------------------------
    def forward_plan(self) -> ForwardPlan:
        """What the next forward pass computes for this sequence: the whole canvas, or (cached) part of it."""
        if self.kv is None:
            return ForwardPlan(0, len(self.tokens))
        return self.kv.plan(self.prompt_len, len(self.tokens), self.block_range(), self._cache_key())

    def keep_kv(self, kv: list[KeyValues]) -> None:
        """Take a full pass's keys/values as the block's cache (``forward_plan`` asked for a refresh)."""
        assert self.kv is not None
        self.kv.store(kv, self.prompt_len, self.block_range(), self._cache_key())

    def _cache_key(self) -> tuple[int, int]:
        return self.block_index, int(self.decided[self.block_range()[1] :].sum())

    def propose(self, window_logits: torch.Tensor, offset: int = 0) -> StepProposal:
        """Proposal from logits scoring answer positions ``offset .. offset + len(window_logits)``."""
        params = self.request.params
        proposed = choose_tokens(window_logits, params.temperature, self.generator, params.top_k, params.top_p)
        probs = window_logits.float().softmax(-1)
        confidence = probs.gather(-1, proposed[:, None])[:, 0]
        certainty = confidence_of(probs, confidence, self.options.confidence)
        if self.options.remasking == "random":
            score = torch.rand(confidence.shape, generator=self.generator, device=confidence.device)
        else:
            score = certainty
        window = slice(offset, offset + len(proposed))

        def spread(values: torch.Tensor, fill: float) -> torch.Tensor:
            out = torch.full((self.gen_len,), fill, dtype=values.dtype, device=values.device)
            out[window] = values
            return out

        known = torch.zeros_like(self.decided)
        known[window] = True
        return StepProposal(spread(proposed, 0), spread(confidence, 0.0), spread(certainty, 0.0),
                            spread(score, -math.inf), known)

    def advance(self, window_logits: torch.Tensor, offset: int = 0) -> None:
        """Apply one forward pass's logits for answer positions ``offset ..``: commit positions, then stream."""
        self.nfe += 1
        proposal = self.propose(window_logits, offset)
        ultra = self.ultra
        if ultra is not None and self._early_stop_due(ultra, proposal):
            self._commit(~self.decided, proposal)
        elif ultra is not None and ultra.enable_instant_first_token and not self.first_revealed \
                and self.nfe >= ultra.first_token_steps:
            self._instant_reveal(ultra, proposal)
            return
        else:
            self._scheduled_step(ultra, proposal)
        self._end_step()

    def _scheduled_step(self, ultra: UltraFastConfig | None, proposal: StepProposal) -> None:
        start, end = self.block_range()
        in_block = torch.zeros_like(self.decided)
        in_block[start:end] = True
        candidates = in_block & ~self.decided
        commit = self._block_commits(candidates, proposal)
        if ultra is not None:
            commit |= self._leading_run(proposal, ultra.stream_confidence_threshold, limit=end, extra=commit)
        if not commit.any() and candidates.any():
            commit[int(torch.where(candidates, proposal.score, -math.inf).argmax())] = True
        if ultra is not None and ultra.stream_every_n_tokens > 0 and self.cursor < end:
            if self.decided_since_visible + int(commit.sum()) >= ultra.stream_every_n_tokens:
                commit[self.cursor] = True  # stall fallback: decide the token the stream waits on
        self._commit(commit, proposal)

    def _block_commits(self, candidates: torch.Tensor, proposal: StepProposal) -> torch.Tensor:
        """The block's commits this step: the best-ranked ``_scheduled_count``, or (threshold decoding)
        every candidate whose certainty reaches the threshold, and all of them once the block's
        step budget is spent. The caller adds the most confident one if this picks none."""
        if self.options.decoding == "threshold":
            if self.block_step >= self.steps_per_block - 1:
                return candidates.clone()
            return candidates & (proposal.certainty >= self.options.threshold)
        commit = torch.zeros_like(self.decided)
        count = self._scheduled_count(int(candidates.sum()))
        if count > 0:
            ranked = torch.where(candidates, proposal.score, torch.full_like(proposal.score, -math.inf))
            commit[torch.topk(ranked, count).indices] = True
        return commit

    def _scheduled_count(self, masked_in_block: int) -> int:
        """Tokens the block schedule still owes at this step (all that remain once it is spent)."""
        if self.block_step >= len(self.block_schedule) - 1:
            return masked_in_block
        owed = sum(self.block_schedule[: self.block_step + 1])
        committed = self.block_size_at_start - masked_in_block
        return max(0, min(owed - committed, masked_in_block))

    def _leading_run(self, proposal: StepProposal, threshold: float, limit: int, extra: torch.Tensor) -> torch.Tensor:
        """Undecided positions from the cursor on whose confidence exceeds ``threshold``, contiguous."""
        run = torch.zeros_like(self.decided)
        conf = proposal.confidence.tolist()
        decided = (self.decided | extra).tolist()
        for pos in range(self.cursor, limit):
            if decided[pos]:
                continue
            if conf[pos] <= threshold:
                break
            run[pos] = True
        return run

    def _instant_reveal(self, ultra: UltraFastConfig, proposal: StepProposal) -> None:
        """Single-step approximation: reveal the confident leading tokens now, at least one."""
        self.first_revealed = True
        run = self._leading_run(proposal, ultra.first_token_confidence_threshold, self.gen_len, self.decided)
        if not run.any() and self.cursor < self.gen_len:
            run[self.cursor] = True
        self._commit(run, proposal)
        self._end_step()
        for _ in range(MAX_EXTRA_FIRST_REVEAL):
            if self.chunks_sent or self.pending or self.finished or self.cursor >= self.gen_len \
                    or not proposal.known[self.cursor]:
                break
            single = torch.zeros_like(self.decided)
            single[self.cursor] = True
            self._commit(single, proposal)
            self._settle()  # still the same forward pass: the block schedule does not move

    def _early_stop_due(self, ultra: UltraFastConfig, proposal: StepProposal) -> bool:
        if not ultra.enable_early_stop or self.nfe < ultra.min_steps:
            return False
        undecided = ~self.decided & proposal.known
        if not undecided.any() or self.progress() < ultra.early_stop_min_progress:
            return False
        return float(proposal.confidence[undecided].mean()) >= ultra.early_stop_confidence

    def _commit(self, positions: torch.Tensor, proposal: StepProposal) -> None:
        positions = positions & ~self.decided & proposal.known
        answer = self.tokens[self.prompt_len :]
        answer[positions] = proposal.tokens[positions]
        self.decided |= positions
        self.decided_since_visible += int(positions.sum())

    # ---- streaming ------------------------------------------------------------------------
    def progress(self) -> float:
        return float(self.decided.sum()) / self.gen_len

    def _end_step(self) -> None:
        self.block_step += 1
        self._settle()

    def _settle(self) -> None:
        """Move on to the next block once this one is decided, then stream what became visible."""
        start, end = self.block_range()
        while not self.finished and end < self.gen_len and bool(self.decided[start:end].all()):
            self.block_index += 1
            self._start_block()
            start, end = self.block_range()
        self._stream()

    def _stream(self) -> None:
        undecided = (~self.decided).nonzero()
        new_cursor = int(undecided[0]) if len(undecided) else self.gen_len
        new_ids = self.tokens[self.prompt_len + self.cursor : self.prompt_len + new_cursor].tolist()
        self.cursor = new_cursor
        hit_eos = next((i for i, t in enumerate(new_ids) if t in self.eos_ids), None)
        if hit_eos is not None:
            new_ids = new_ids[:hit_eos]
        self.committed_tokens += len(new_ids)
        text = self.detokenizer.add(new_ids)
        if self.detokenizer.stopped or hit_eos is not None:
            self.finish_reason = "stop"
        elif self.cursor >= self.gen_len:
            self.finish_reason = "length"
        if self.finished:
            text += self.detokenizer.finish()
        if text:
            self.decided_since_visible = 0
        if text or self.finished:
            self._queue_chunk(text, len(new_ids))

    def _queue_chunk(self, text: str, new_tokens: int) -> None:
        self.pending.append(
            StreamingChunk(
                new_text=text,
                full_text=self.detokenizer.text,
                new_tokens=new_tokens,
                total_tokens=self.committed_tokens,
                target_tokens=self.gen_len,
                progress=1.0 if self.finished else self.progress(),
                time_ms=(time.perf_counter() - self.started) * 1000.0,
                is_first=self.chunks_sent + len(self.pending) == 0,
                is_final=self.finished,
                nfe=self.nfe,
                finish_reason=self.finish_reason,
                prompt_tokens=self.prompt_len,
            )
        )

    def drain(self) -> list[StreamingChunk]:
        out, self.pending = self.pending, []
        self.chunks_sent += len(out)
        return out


def _context_len(plan: ForwardPlan) -> int:
    return 0 if plan.context is None else plan.context[0][0].shape[1]


class DiffusionEngine:
    """Runs diffusion sequences on one model. ``forward_passes`` counts every pass it makes;
    ``max_batch_size`` bounds how many sequences ``step`` puts in one pass."""

    kind = "diffusion"

    def __init__(self, model: DiffusionLM, defaults: DiffusionOptions | None = None, max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.model = model
        self.defaults = defaults or DiffusionOptions()
        self.max_batch_size = max_batch_size
        self.forward_passes = 0

    def start(self, request: GenerationRequest) -> DiffusionSequence:
        options = request.diffusion or self.defaults
        gen_len = request.params.max_tokens
        if gen_len < 1:
            raise ValueError("max_tokens must be at least 1")
        total = len(request.prompt_ids) + gen_len
        if total > self.model.max_context:
            raise ValueError(f"prompt ({len(request.prompt_ids)}) + max_tokens ({gen_len}) exceeds the context ({self.model.max_context})")
        device = self.model.device
        canvas = torch.tensor(
            list(request.prompt_ids) + [self.model.mask_token_id] * gen_len, dtype=torch.long, device=device
        )
        return DiffusionSequence(
            request=request,
            options=options,
            tokens=canvas,
            prompt_len=len(request.prompt_ids),
            detokenizer=StreamingDetokenizer(self.model.tokenizer, request.params.stop),
            eos_ids=self.model.eos_token_ids,
            generator=make_generator(request.params.seed, device),
            steps_per_block=self.steps_per_block(options, gen_len),
            kv=BlockCache(dual=options.cache == "dual") if options.cache != "none" and self.model.kv_cache else None,
        )

    @staticmethod
    def steps_per_block(options: DiffusionOptions, gen_len: int) -> int:
        """The step budget (one per token unless ``steps`` says otherwise; ultra-fast clamps it to
        [min_steps, max_steps]) shared evenly among the blocks."""
        total = options.steps or gen_len
        if options.ultra_fast:
            cfg = options.ultra_fast_config
            total = min(max(total, cfg.min_steps), cfg.max_steps)
        num_blocks = math.ceil(gen_len / options.block_length)
        return max(1, total // num_blocks)

    def step(self, sequences: list[DiffusionSequence]) -> None:
        """One denoising step for each sequence, sharing forward passes: ``max_batch_size`` sequences
        a pass, left-padded; for a model without ``padded_batches``, only sequences whose slices
        have equal lengths (they need no padding) share one."""
        plans = [seq.forward_plan() for seq in sequences]
        if self.model.padded_batches:
            groups = chunks(list(range(len(plans))), self.max_batch_size)
        else:
            by_shape: dict[tuple[int, int], list[int]] = {}
            for i, plan in enumerate(plans):
                by_shape.setdefault((plan.end - plan.start, _context_len(plan)), []).append(i)
            groups = [group for same in by_shape.values() for group in chunks(same, self.max_batch_size)]
        for group in groups:
            self._run([sequences[i] for i in group], [plans[i] for i in group])

    def _run(self, batch: list[DiffusionSequence], plans: list[ForwardPlan]) -> None:
        """One forward pass for ``batch``, then each sequence's step."""
        device = self.model.device
        ids, mask = left_pad([seq.tokens[p.start : p.end] for seq, p in zip(batch, plans)], value=self.model.mask_token_id)
        positions, _ = left_pad([torch.arange(p.start, p.end, device=device) for p in plans])
        kv = None
        if any(p.context is not None or p.refresh for p in plans):
            logits, kv = self._cached_forward(ids, positions, mask, plans)
        elif bool(mask.all()):
            logits = self.model.logits(ids)  # every canvas starts at position 0: nothing to pad or shift
        else:
            logits = self.model.logits(ids, mask, positions)
        self.forward_passes += 1
        for i, (seq, plan) in enumerate(zip(batch, plans)):
            if plan.refresh:
                n = plan.end - plan.start
                seq.keep_kv([(k[i, :, -n:], v[i, :, -n:]) for k, v in kv])
            first = max(plan.start, seq.prompt_len)  # the first answer position the pass computed
            window = logits[i, logits.shape[1] - (plan.end - first) :]
            window[:, self.model.mask_token_id] = -math.inf  # the mask is never a valid answer token
            seq.advance(window, first - seq.prompt_len)

    def _cached_forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, plans: list[ForwardPlan]
    ) -> tuple[torch.Tensor, list[KeyValues]]:
        """A pass that attends to each sequence's cached context (left-padded per layer) and returns keys/values."""
        contexts = [p.context for p in plans]
        reference = next((c for c in contexts if c is not None), None)
        past: list[KeyValues] | None = None
        if reference is not None:
            past = []
            for layer, (ref_keys, _) in enumerate(reference):
                empty = ref_keys[:, :0]
                keys, context_mask = left_pad([c[layer][0] if c else empty for c in contexts], dim=1)
                values, _ = left_pad([c[layer][1] if c else empty for c in contexts], dim=1)
                past.append((keys, values))
            mask = torch.cat([context_mask, mask], dim=1)
        return self.model.logits_and_kv(ids, positions, None if bool(mask.all()) else mask, past)

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[StreamingChunk]:
        """Stream chunks as the prefix grows. ``should_stop`` is polled before every step."""
        seq = self.start(request)
        while not seq.finished:
            if should_stop is not None and should_stop():
                return
            self.step([seq])
            yield from seq.drain()
