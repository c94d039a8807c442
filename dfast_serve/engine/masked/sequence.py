"""One diffusion request's state and its step's postprocessing: decide, then stream.

The canvas is the prompt followed by ``max_tokens`` answer positions, masks until decided, split
into semi-autoregressive blocks of ``block_length``. ``advance`` takes one pass's logits, asks the
commit policies (``policies``) which undecided positions to decide, within the pass budget
(``budget``) and the block's schedule (``schedule``), and streams the decided prefix: only tokens
before the *cursor* (the first undecided position) are handed to the detokenizer, so the text is
append-only even though tokens are decided out of order; nothing after the first EOS is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dfast_serve.engine.masked import policies
from dfast_serve.engine.masked.budget import PassBudget
from dfast_serve.engine.masked.kv_cache import BlockCache, ForwardPlan
from dfast_serve.wire.options import DiffusionOptions, UltraFastConfig
from dfast_serve.engine.masked.proposal import Proposal, propose_pieces
from dfast_serve.models.pieces import Pieces, drive
from dfast_serve.engine.masked.schedule import front_loaded_schedule, uniform_schedule
from dfast_serve.engine.sequence import Sequence
from dfast_serve.wire.tensors import KeyValues


@dataclass(eq=False)
class DiffusionSequence(Sequence):
    """One request's canvas, decided positions, block geometry and pass budget."""

    options: DiffusionOptions
    canvas: torch.Tensor  # prompt + answer token ids (masks where undecided)
    prompt_len: int
    budget: PassBudget
    kv: BlockCache | None = None
    decided: torch.Tensor = field(init=False)
    cursor: int = 0  # first undecided answer position
    streamed: int = 0  # answer positions handed to the stream
    block_index: int = 0
    block_step: int = 0
    block_allowance: int = 0
    block_schedule: list[int] = field(default_factory=list)
    block_size_at_start: int = 0
    block_first_pass: int = 0
    passes_per_block: list[int] = field(default_factory=list)
    revealed: bool = False
    decided_without_progress: int = 0
    work: int = 0  # canvas tokens its passes computed, sampling included: the engine's fairness clock
    clocked: bool = False  # its work was set to the others' on arrival (once: after that, waiting counts)
    sampled: int = 0  # positions the latest pass sampled
    max_draft_tokens: int | None = None  # a draft samples at most this many positions from the cursor
    guess: torch.Tensor = field(init=False)  # latest proposal per answer position (-1: never scored)
    pass_in_pieces: Pieces[None] | None = None  # a pass under way in pieces (the family's), and the plan it computes
    pass_in_pieces_plan: ForwardPlan | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guess = torch.full((self.gen_len,), -1, dtype=torch.long, device=self.canvas.device)
        self.decided = torch.zeros(self.gen_len, dtype=torch.bool, device=self.canvas.device)
        self._start_block()

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def gen_len(self) -> int:
        return self.request.params.max_tokens

    @property
    def answer(self) -> torch.Tensor:
        return self.canvas[self.prompt_len :]

    @property
    def ultra(self) -> UltraFastConfig | None:
        return self.options.ultra_fast_config if self.options.ultra_fast else None

    def block_range(self) -> tuple[int, int]:
        start = self.block_index * self.options.block_length
        return start, min(start + self.options.block_length, self.gen_len)

    def progress(self) -> float:
        return float(self.decided.sum()) / self.gen_len

    def _start_block(self) -> None:
        start, end = self.block_range()
        remaining = int((~self.decided[start:end]).sum())
        self.block_step, self.block_size_at_start, self.block_first_pass = 0, remaining, self.nfe
        self.block_allowance = self.budget.block_allowance(self.nfe)
        front_loaded = self.ultra is not None and self.ultra.schedule == "front_loaded"
        self.block_schedule = (front_loaded_schedule if front_loaded else uniform_schedule)(remaining, self.block_allowance)

    # ---- plan ---------------------------------------------------------------------------------
    def forward_plan(self) -> ForwardPlan:
        """What the next pass computes: the whole canvas, or (cached) part of it. The last pass the
        budget allows scores every position, since it decides them all."""
        if self.kv is None or self.budget.is_last_pass(self.nfe + 1):
            return ForwardPlan(0, len(self.canvas))
        return self.kv.plan(self.prompt_len, len(self.canvas), self.block_range(), self._cache_key())

    def keep_kv(self, kv: list[KeyValues]) -> None:
        """Take a full pass's keys/values as the block's cache (``forward_plan`` asked for a refresh)."""
        assert self.kv is not None
        self.kv.store(kv, self.prompt_len, self.block_range(), self._cache_key())

    def _cache_key(self) -> tuple[int, int]:
        return self.block_index, int(self.decided[self.block_range()[1] :].sum())

    # ---- postprocess --------------------------------------------------------------------------
    def advance(self, window_logits: torch.Tensor, offset: int = 0) -> None:
        """Apply one pass's logits for answer positions ``offset ..``: decide, then stream."""
        drive(self.advance_pieces(window_logits, offset))

    def advance_pieces(self, window_logits: torch.Tensor, offset: int = 0, rows: int | None = None) -> Pieces[None]:
        """``advance`` with its sampling in pieces of ``rows`` positions (``proposal.propose_pieces``)."""
        self.nfe += 1
        self.shape_logits(window_logits, offset)
        proposal = yield from propose_pieces(window_logits, offset, self.gen_len, self.request.params, self.options,
                                             self.generator, self._to_sample(self.nfe), rows)
        self.sampled = int(proposal.known.sum())
        undecided = ~self.decided
        if self.budget.is_last_pass(self.nfe) or self._early_stop_due(proposal):
            commit = policies.everything(undecided, proposal.known)
        else:
            commit = self._step_commits(proposal)
            owed = self.budget.passes_still_owed(self.nfe)
            commit = policies.keep_undecided(commit, self._streaming_first(commit, proposal.score), undecided, owed)
        if self.request.params.draft:
            self.guess[proposal.known] = proposal.tokens[proposal.known]
        self._commit(commit, proposal)
        self.block_step += 1
        self._move_to_next_block()
        self._stream()

    def _streaming_first(self, commit: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """``score`` with the commits that extend the decided prefix ranked above all others, in reading
        order: when ``min_steps`` makes a pass give some commits back, the stream keeps moving."""
        run = policies.leading_run(~self.decided, commit.float(), self.cursor, self.gen_len, 0.5)
        positions = torch.arange(self.gen_len, device=score.device, dtype=score.dtype)
        return torch.where(run, 2.0 + (self.gen_len - positions) / self.gen_len, score)

    def samples_next(self, plan: ForwardPlan) -> int:
        """How many positions the next pass, computing ``plan``, will sample (``advance``)."""
        first, end = max(plan.start - self.prompt_len, 0), max(plan.end - self.prompt_len, 0)
        return int(self._to_sample(self.nfe + 1)[first:end].sum())

    def _to_sample(self, nfe: int) -> torch.Tensor:
        """Positions pass ``nfe`` samples: those some policy may decide (``_eligible``) and, for a draft,
        the undecided ones among the ``max_draft_tokens`` from the cursor, whose guesses the draft shows
        (same decisions: the policies still look only where they may commit)."""
        eligible = self._eligible(nfe)
        if not self.request.params.draft:
            return eligible
        ahead = ~self.decided
        if self.max_draft_tokens is not None:
            ahead[self.cursor + self.max_draft_tokens :] = False
        return eligible | ahead

    def _eligible(self, nfe: int) -> torch.Tensor:
        """Positions some policy may decide at pass ``nfe``: the current block's undecided ones, or every
        undecided one when the instant reveal, early stop or the budget's last pass may look beyond it."""
        undecided = ~self.decided
        ultra = self.ultra
        beyond_block = self.budget.is_last_pass(nfe) or (ultra is not None and (
            (ultra.enable_instant_first_token and not self.revealed and nfe >= ultra.first_token_steps)
            or (ultra.enable_early_stop and nfe >= ultra.min_steps
                and self.progress() >= ultra.early_stop_min_progress)))
        if beyond_block:
            return undecided
        start, end = self.block_range()
        in_block = torch.zeros_like(undecided)
        in_block[start:end] = True
        return undecided & in_block

    def _step_commits(self, proposal: Proposal) -> torch.Tensor:
        """This pass's decisions before the budget's bounds: the block's schedule (or threshold),
        and under ultra-fast the instant reveal, confident leading tokens and the stall fallback."""
        ultra = self.ultra
        undecided = ~self.decided & proposal.known
        if ultra is not None and ultra.enable_instant_first_token and not self.revealed \
                and self.nfe >= ultra.first_token_steps:
            self.revealed = True
            reveal = policies.leading_run(undecided, proposal.confidence, self.cursor, self.gen_len,
                                          ultra.first_token_confidence_threshold)
            return policies.at_least_one(reveal, self._cursor_only(undecided), proposal.score)
        start, end = self.block_range()
        candidates = undecided.clone()
        candidates[:start] = False
        candidates[end:] = False
        commit = self._block_commits(candidates, proposal)
        if ultra is not None:
            commit |= policies.leading_run(undecided & ~commit, proposal.confidence, self.cursor, end,
                                           ultra.stream_confidence_threshold)
        commit = policies.at_least_one(commit, candidates, proposal.score)
        if ultra is not None and self.cursor < end and policies.stall_fallback(
                self.decided_without_progress + int(commit.sum()), ultra.stream_every_n_tokens):
            commit |= self._cursor_only(undecided)
        return commit

    def _cursor_only(self, undecided: torch.Tensor) -> torch.Tensor:
        only = torch.zeros_like(undecided)
        if self.cursor < self.gen_len:
            only[self.cursor] = undecided[self.cursor]
        return only

    def _block_commits(self, candidates: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """The block's share this pass: what the schedule owes by now, or (threshold decoding) every
        candidate sure enough; everything once the block's allowance is spent."""
        if self.block_step >= self.block_allowance - 1:
            return candidates.clone()
        if self.options.decoding == "threshold":
            return policies.above_threshold(candidates, proposal.certainty, self.options.threshold)
        owed = sum(self.block_schedule[: self.block_step + 1])
        committed = self.block_size_at_start - int(candidates.sum())
        return policies.scheduled(candidates, proposal.score, owed - committed)

    def _early_stop_due(self, proposal: Proposal) -> bool:
        ultra = self.ultra
        if ultra is None or not ultra.enable_early_stop:
            return False
        undecided = ~self.decided & proposal.known
        return policies.early_stop_due(proposal.confidence[undecided], self.progress(), self.nfe,
                                       ultra.min_steps, ultra.early_stop_min_progress, ultra.early_stop_confidence)

    def _commit(self, positions: torch.Tensor, proposal: Proposal) -> None:
        positions = positions & ~self.decided & proposal.known
        self.answer[positions] = proposal.tokens[positions]
        self.decided |= positions
        undecided = (~self.decided).nonzero()
        cursor = int(undecided[0]) if len(undecided) else self.gen_len
        if cursor > self.cursor:
            self.cursor, self.decided_without_progress = cursor, 0
        else:
            self.decided_without_progress += int(positions.sum())

    def _move_to_next_block(self) -> None:
        start, end = self.block_range()
        while end < self.gen_len and bool(self.decided[start:end].all()):
            used = self.nfe - self.block_first_pass
            self.passes_per_block.append(used)
            self.budget.end_block(self.block_allowance, used)
            self.block_index += 1
            self._start_block()
            start, end = self.block_range()

    def _stream(self) -> None:
        """Hand the newly decided prefix to the stream (nothing before pass ``first_token_steps``),
        and the draft of the rest when the request asked for it."""
        ultra = self.ultra
        if not (ultra is not None and self.nfe < ultra.first_token_steps and self.cursor < self.gen_len):
            new_ids = self.answer[self.streamed : self.cursor].tolist()
            self.streamed = self.cursor
            self.emit(new_ids, exhausted=self.cursor >= self.gen_len)
            if self.finished and len(self.passes_per_block) == self.block_index:
                self.passes_per_block.append(self.nfe - self.block_first_pass)
        if self.request.params.draft and self.error is None:
            self.attach_draft(self.draft_text())

    # ---- draft --------------------------------------------------------------------------------
    def context_ids(self) -> torch.Tensor:
        """The prompt and every answer token decided so far, wherever it sits in the canvas."""
        return torch.cat([self.canvas[: self.prompt_len], self.answer[self.decided]])

    def draft_text(self) -> str:
        """The best guess of the text after what the stream has released: the answer with every
        undecided position filled by its latest proposal (a position no pass has scored yet, or
        the first EOS, ends it; so does ``max_draft_tokens`` past the cursor), decoded whole, minus the
        released prefix."""
        ids = torch.where(self.decided, self.answer, self.guess)
        unknown = (ids < 0).nonzero()
        end = int(unknown[0]) if len(unknown) else self.gen_len
        if self.max_draft_tokens is not None:
            end = min(end, self.cursor + self.max_draft_tokens)
        ids = ids[:end].tolist()
        eos = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        if eos is not None:
            ids = ids[:eos]
        full = self.detokenizer.tokenizer.decode(ids, skip_special_tokens=self.detokenizer.skip_special_tokens,
                                                 clean_up_tokenization_spaces=False)
        return full[self.detokenizer.sent_chars :]
