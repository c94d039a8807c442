"""Autoregressive generation with a KV cache: the prompt's prefill (in chunks under a token budget),
then one forward pass per token.

Every token is streamed the moment it is decoded (subject only to the detokenizer's UTF-8 and
stop-string hold-back): the first chunk leaves right after the pass that ends the prompt's prefill.

``Autoregressive`` is the family the engine core runs (``core.py``). Each step (``schedule``):

* every decoding sequence takes one token; decodes share passes (``max_batch_size`` a pass), with
  no prompt among them, so a decode is never padded to a prompt's length;
* prompts are prefilled in their own passes, one sequence a pass, with what is left of
  ``step_token_budget`` after the decodes (each counts 1): a prompt longer than that is prefilled in
  chunks over several steps (chunked prefill, vLLM's ``max_num_batched_tokens``), each chunk
  extending the sequence's cache; its first token is sampled after the last chunk. The shortest
  remaining prompt goes first, so a newly arrived short request is prefilled in the next step even
  beside a long prompt halfway through its chunks (which gets the rest of the budget);
* with a pacer (``pacing.PrefillPacer``, ``chunk_decodes``) the chunks are also sized in time: a step's
  prefill takes about ``chunk_decodes`` decode passes (a new prompt of up to twice that runs whole), and
  while sequences decode, prompts under way get at most half of the time.

A decode pass runs on its group's batch cache (``_DecodeGroup``), rows left-padded to the longest with
an attention mask and explicit position ids; the cache is kept from step to step and appended in
place (``models/causal_lm.py``: ``GrowingLayer``), so a step copies no cache; the group's cache is
stacked anew (each member's copied once) only when its members change (one joins after its prefill,
one ends). A lone prefill or decode runs on the sequence's own cache, sized for its prompt and a
first part of its answer, doubling when full.
A model whose cache cannot be stacked runs its sequences one per pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from dfast_serve.engine.ar.pacing import MIN_CHUNK, PrefillPacer
from dfast_serve.engine.ar.shape import ArShape, layout
from dfast_serve.engine.batching import split_into
from dfast_serve.engine.core import Pass
from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.limits import check_context, check_prompt
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sampling import choose_tokens, make_generator
from dfast_serve.engine.sequence import Sequence
from dfast_serve.models.causal_lm import BATCH_ROOM, CausalLM
from dfast_serve.wire import BatchInvariance

PassOutput = tuple[torch.Tensor, Callable[[int], Any]]  # rows' last logits (rows, vocab), row -> its cache
PREFILL, DECODE = "prefill", "decode"


@dataclass(eq=False)
class ARSequence(Sequence):
    """One request's tokens not yet in its cache, its KV cache (the adapter's, opaque here), how many
    positions that cache holds and its count of generated tokens."""

    next_input: torch.Tensor  # (1, n): the prompt (what is left of it) before prefill, then the last sampled token
    past_key_values: Any = None
    cached: int = 0  # positions in past_key_values: prompt chunks prefilled, then every token fed back
    generated: int = 0

    @property
    def prefilling(self) -> bool:
        """Whether part of the prompt is not yet in the cache (no token sampled yet)."""
        return self.cached < len(self.request.prompt_ids)

    def progress(self) -> float:
        return self.generated / self.target_tokens

    def consume(self, tokens: int, past_key_values: Any) -> None:
        """A pass put the first ``tokens`` of ``next_input`` into the cache."""
        self.nfe += 1
        self.past_key_values = past_key_values
        self.cached += tokens
        self.next_input = self.next_input[:, tokens:]

    def advance(self, last_logits: torch.Tensor) -> None:
        """Take the logits of the last position, choose the next token and stream it."""
        params = self.request.params
        self.shape_logits(last_logits, self.generated)
        token = int(choose_tokens(last_logits, params.temperature, self.generator, params.top_k, params.top_p))
        self.next_input = torch.tensor([[token]], device=self.next_input.device)
        if token not in self.eos_ids:
            self.generated += 1
        self.emit([token], exhausted=self.generated >= params.max_tokens)


@dataclass(eq=False)
class _DecodeGroup:
    """Decoding sequences that share passes step after step, and their batch cache: row i is
    ``sequences[i]``'s, left-padded to the longest (``mask``: (rows, columns), 1 on real keys)."""

    sequences: list[ARSequence]
    cache: Any
    mask: torch.Tensor


class Autoregressive:
    """The AR family on one causal LM. ``max_batch_size`` bounds how many decodes share a pass;
    ``step_token_budget`` (None: no bound, every prompt prefilled whole) the new tokens one step computes,
    decodes (one each) and prefill chunks together; ``max_running`` (the core's) is how many decodes a
    step may hold, so the budget must exceed it: a step always has room for a prefill token.

    ``batch_invariance="strict"`` keeps a sequence's output independent of who else is running: with a
    stackable cache, every decode pass has the fixed shape of its bucket (``shape.ArShape``: key columns
    bucketed, dummy rows up to ``max_batch_size``); a prefill pass has one row, as always, and a fixed
    chunk size (``budget - max_running``) that does not depend on what else runs, so it needs no dummy
    rows; without a stackable cache, sequences already run one per pass, at shapes of their own.

    ``chunk_decodes`` (None: chunks sized by the token budget alone; strict invariance never paces, its
    chunk size is fixed): a step's prefill is sized to take about that many decode passes' time, measured
    (``pacing.PrefillPacer``), so that neither a new request's first token nor a decoding request's next
    one waits long behind a long prompt.
    """

    kind = "ar"

    def __init__(self, model: CausalLM, max_batch_size: int = 8, batch_invariance: BatchInvariance = "off",
                 step_token_budget: int | None = None, max_running: int | None = None,
                 chunk_decodes: float | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        max_running = max_running or max_batch_size
        if step_token_budget is not None and step_token_budget <= max_running:
            raise ValueError(f"step_token_budget ({step_token_budget}) must exceed the requests running at once "
                             f"({max_running}): each decode takes a token of it, and a prompt needs at least one")
        self.model = model
        self.batch_invariance = batch_invariance
        self.max_batch_size = max_batch_size
        self.step_token_budget = step_token_budget
        self.chunk_tokens = None if step_token_budget is None else step_token_budget - max_running
        self._fixed = batch_invariance == "strict" and model.merges_caches
        self.pacer = None if chunk_decodes is None or self._fixed else PrefillPacer(chunk_decodes, model.attention_span)
        self._decoding = False  # whether the step being run has decodes (the pacer's share)
        self._groups: dict[tuple[int, ...], _DecodeGroup] = {}  # decode passes' groups, kept while their members are

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
        """Decode passes (one token for every decoding sequence), then prefill passes (one sequence each,
        the shortest remaining prompt first, ties in arrival order) with what is left of the budget."""
        decodes = [s for s in sequences if not s.prefilling]
        self._decoding = bool(decodes)
        yield from self._decode_passes(decodes)
        left = None if self.step_token_budget is None else self.step_token_budget - len(decodes)
        pacer, seconds_left, prefills, started_may_go = self.pacer, math.inf, 0, True
        if pacer is not None:
            seconds_left = pacer.target
            started_may_go = pacer.may_continue(self._decoding)
        prompts = sorted((s for s in sequences if s.prefilling), key=lambda s: s.next_input.shape[1])  # stable
        for seq in prompts:
            remaining = seq.next_input.shape[1]
            if left is None:
                chunk = remaining
            elif self._fixed:  # chunk boundaries that do not depend on the batch mates
                chunk = min(remaining, self.chunk_tokens)
                if chunk > left:
                    break
            else:
                chunk = min(remaining, left)
            if pacer is not None:
                if seq.cached and not started_may_go:
                    continue  # its decoding neighbours are owed time; a new prompt may still go
                if seq.cached or pacer.seconds(remaining, 0) > 2 * pacer.target:
                    chunk = min(chunk, pacer.chunk(seq.cached, seconds_left))
                # else a new prompt of up to two steps' prefill time runs whole: a chunk would only delay its tokens
                estimate = pacer.seconds(chunk, seq.cached)
                if prefills and (chunk < min(remaining, MIN_CHUNK) or estimate > seconds_left):
                    break  # the step's prefill time is spent
                seconds_left -= estimate
            if chunk < 1:
                break
            prefills += 1
            if left is not None:
                left -= chunk
            shape = ArShape.of(seq.cached, chunk, 1) if self._fixed else None
            yield Pass([seq], plans=[chunk], phase=PREFILL, shape=shape)

    def _decode_passes(self, decodes: list[ARSequence]) -> Iterator[Pass[ARSequence]]:
        """``max_batch_size`` decodes a pass; strict batch invariance: decodes of one ``ArShape`` per pass,
        at most its rows."""
        if self._fixed:
            by_shape: dict[ArShape, list[ARSequence]] = {}
            for seq in decodes:
                by_shape.setdefault(ArShape.of(seq.cached, 1, self.max_batch_size), []).append(seq)
            for shape, same in by_shape.items():
                for batch in split_into(same, shape.rows):
                    yield Pass(batch, phase=DECODE, shape=shape)
            return
        size = self.max_batch_size if self.model.merges_caches else 1
        batches = split_into(decodes, size)
        keys = {tuple(id(s) for s in batch) for batch in batches}
        self._groups = {key: group for key, group in self._groups.items() if key in keys}  # release the others
        for batch in batches:
            yield Pass(batch, phase=DECODE)

    def forward(self, pass_: Pass[ARSequence]) -> PassOutput:
        if self.pacer is None:
            return self._forward(pass_)
        start = time.perf_counter()
        output = self._forward(pass_)
        if output[0].is_cuda:
            torch.cuda.synchronize(output[0].device)  # a pass's time is its kernels', not their launch
        seconds = time.perf_counter() - start
        if pass_.phase == PREFILL:
            self.pacer.observed_prefill(seconds, pass_.plan(0), pass_.sequences[0].cached, self._decoding)
        else:
            self.pacer.observed_decode(seconds)
        return output

    def _forward(self, pass_: Pass[ARSequence]) -> PassOutput:
        batch, shape = pass_.sequences, pass_.shape
        if shape is not None:
            return self._forward_fixed(pass_)
        if pass_.phase == PREFILL or not self.model.merges_caches:
            seq = batch[0]
            ids = seq.next_input[:, : self._new_tokens(pass_, 0)]
            logits, cache = self.model.forward_alone(ids, seq.past_key_values, self._reserve(seq))
            return logits[None], lambda row: cache
        return self._forward_decodes(batch)

    def _forward_decodes(self, batch: list[ARSequence]) -> PassOutput:
        """One token for each of ``batch`` on their decode group's batch cache, appended in place; the group
        (and its cache: a copy of each member's) is formed anew only when its members change."""
        key = tuple(id(s) for s in batch)  # the group holds its members: their ids are not reused meanwhile
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = self._group_of(batch)
        device = self.model.device
        ids = torch.cat([s.next_input for s in batch])
        positions = torch.tensor([s.cached for s in batch], device=device)[:, None]
        mask = torch.cat([group.mask, torch.ones((len(batch), 1), dtype=torch.long, device=device)], dim=1)
        try:
            logits, cache = self.model.forward_batch(ids, positions, mask, group.cache)
        except Exception:
            del self._groups[key]  # its cache may hold half a pass; members keep their rows as they were
            raise
        group.cache, group.mask = cache, mask
        end, lengths = mask.shape[1], [s.cached + 1 for s in batch]
        return logits, lambda row: self.model.row_of(cache, row, end, lengths[row])

    def _group_of(self, batch: list[ARSequence]) -> "_DecodeGroup":
        device = self.model.device
        past_lens = [s.cached for s in batch]
        columns = max(past_lens)
        mask = torch.zeros((len(batch), columns), dtype=torch.long, device=device)
        for i, past in enumerate(past_lens):
            mask[i, columns - past :] = 1
        if len(batch) == 1 and self.model.owns(batch[0].past_key_values):  # its own cache: take it over as is
            return _DecodeGroup(batch, batch[0].past_key_values, mask)
        cache = self.model.stack_caches([s.past_key_values for s in batch], past_lens, columns, len(batch), BATCH_ROOM)
        return _DecodeGroup(batch, cache, mask)

    def _forward_fixed(self, pass_: Pass[ARSequence]) -> PassOutput:
        """Strict batch invariance: [cache padding | cache | input padding | input], fixed columns and rows;
        each row's cache is copied back out of the pass's batch cache."""
        batch, shape = pass_.sequences, pass_.shape
        inputs = [s.next_input[0, : self._new_tokens(pass_, row)] for row, s in enumerate(batch)]
        past_lens = [s.cached for s in batch]
        ids, positions, mask = layout(inputs, past_lens, shape, self.model.device)
        cache = self.model.stack_caches([s.past_key_values for s in batch], past_lens, shape.past, shape.rows)
        logits, merged = self.model.forward_batch(ids, positions, mask, cache)
        return logits, lambda row: self.model.copy_row(merged, row, mask[row])

    def _reserve(self, seq: ARSequence) -> int:
        """The positions a sequence's own cache is first sized for: its prompt and up to ``BATCH_ROOM`` answer
        tokens (it doubles when full; sizing it for ``max_tokens`` up front would hold memory that an answer
        ending early never uses)."""
        return len(seq.request.prompt_ids) + min(seq.request.params.max_tokens, BATCH_ROOM)

    @torch.inference_mode()  # the logits are inference tensors: their processors work on them in place
    def advance(self, seq: ARSequence, row: int, output: PassOutput, pass_: Pass[ARSequence]) -> None:
        logits, row_cache = output
        seq.consume(self._new_tokens(pass_, row), row_cache(row))
        if not seq.prefilling:
            seq.advance(logits[row])

    @staticmethod
    def _new_tokens(pass_: Pass[ARSequence], row: int) -> int:
        """The tokens a pass feeds a sequence: its prefill chunk, or the one token a decode feeds back."""
        return pass_.plan(row) or 1
