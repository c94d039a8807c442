"""One masked-diffusion request's decisions (``engine/masked/sequence.py``), pass by pass, on logits the
test writes (each answer position: a token and its probability): which positions a pass decides under
the block schedule, threshold decoding, the budget's bounds and each ultra-fast policy; what streams and
when; the draft. No model runs: microseconds a pass."""

from __future__ import annotations

import math

import pytest
import torch

from dfast_serve.engine import GenerationRequest, SamplingParams
from dfast_serve.engine.masked.family import MaskedDiffusion
from dfast_serve.engine.masked.kv_cache import ForwardPlan
from dfast_serve.wire import DiffusionOptions, UltraFastConfig
from tests.engine.masked.tiny import EOS, VOCAB, tiny_masked

FAMILY = MaskedDiffusion(tiny_masked())
OFF = dict(enable_instant_first_token=False, stream_confidence_threshold=1.0, stream_every_n_tokens=0,
           enable_early_stop=False, min_steps=1, schedule="uniform")


def start(gen: int = 4, block: int = 4, steps: int | None = None, ultra: dict | None = None, prompt=(5, 6),
          max_draft_tokens=None, **params):
    """A sequence as the family starts it; ``ultra`` (None: the standard path) overrides ``OFF``."""
    options = DiffusionOptions(ultra_fast=ultra is not None, steps=steps, block_length=block,
                               ultra_fast_config=UltraFastConfig(**{**OFF, **(ultra or {})}))
    family = MaskedDiffusion(tiny_masked(), limits=FAMILY.limits.__class__(max_draft_tokens=max_draft_tokens)) \
        if max_draft_tokens else FAMILY
    return family.start(GenerationRequest(list(prompt), SamplingParams(max_tokens=gen, **params), options))


def logits(tokens: list[int], probs: list[float]) -> torch.Tensor:
    """Row i proposes ``tokens[i]`` with probability ``probs[i]``, the rest spread evenly over the other tokens."""
    rows = torch.empty(len(tokens), VOCAB)
    for i, (token, p) in enumerate(zip(tokens, probs)):
        rows[i] = math.log((1 - p) / (VOCAB - 1)) if p < 1 else -30.0
        rows[i, token] = math.log(p) if p < 1 else 0.0
    return rows


def step(seq, tokens, probs):
    seq.advance(logits(tokens, probs))  # the window covers the whole answer: offset 0, the default
    return decided(seq)


def decided(seq) -> str:
    """The answer as the test reads it: a letter per decided position, ``_`` per undecided one."""
    return "".join(chr(ord("a") + t - 1) if d and t != EOS else ("$" if d else "_")
                   for t, d in zip(seq.answer.tolist(), seq.decided.tolist()))


def streamed(seq) -> list[tuple[str, int, bool, str | None]]:
    return [(c.new_text, c.total_tokens, c.is_final, c.finish_reason) for c in seq.drain()]


ABCD = [1, 2, 3, 4]


# ---- the standard path ---------------------------------------------------------------------------
def test_the_block_schedule_decides_the_most_probable_first_and_streams_only_the_decided_prefix():
    seq = start(gen=4, block=4, steps=4)
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "_b__" and streamed(seq) == []
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "_b_d" and streamed(seq) == []
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "_bcd"
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "abcd"
    assert streamed(seq) == [("abcd", 4, True, "length")]
    assert (seq.nfe, seq.passes_per_block, seq.progress(), seq.cursor) == (4, [4], 1.0, 4)


def test_a_pass_decides_only_in_the_current_block_and_blocks_split_the_steps():
    seq = start(gen=8, block=4, steps=4)  # 2 passes a block, 2 tokens a pass
    probs = [0.3, 0.6, 0.5, 0.4, 0.99, 0.99, 0.99, 0.99]
    tokens = [1, 2, 3, 4, 5, 6, 7, 8]
    assert step(seq, tokens, probs) == "_bc_____" and streamed(seq) == []
    assert seq.progress() == 0.25
    assert step(seq, tokens, probs) == "abcd____" and streamed(seq) == [("abcd", 4, False, None)]
    assert (seq.block_index, seq.block_range()) == (1, (4, 8))
    assert step(seq, tokens, [0.1] * 4 + [0.5, 0.9, 0.8, 0.7]) == "abcd_fg_"
    assert step(seq, tokens, probs) == "abcdefgh" and streamed(seq) == [("efgh", 8, True, "length")]
    assert seq.passes_per_block == [2, 2]


def test_threshold_decoding_decides_every_sure_token_or_else_the_best_and_the_last_pass_the_rest():
    options = DiffusionOptions(ultra_fast=False, steps=2, block_length=4, decoding="threshold", threshold=0.8)
    seq = FAMILY.start(GenerationRequest([5, 6], SamplingParams(max_tokens=4), options))
    assert step(seq, ABCD, [0.81, 0.5, 0.9, 0.79]) == "a_c_"  # at or above 0.8
    assert step(seq, ABCD, [0.1, 0.1, 0.1, 0.1]) == "abcd"  # the block's last allowed pass: everything
    options = DiffusionOptions(ultra_fast=False, steps=2, block_length=4, decoding="threshold", threshold=0.95)
    seq = FAMILY.start(GenerationRequest([5, 6], SamplingParams(max_tokens=4), options))
    assert step(seq, ABCD, [0.5, 0.6, 0.9, 0.2]) == "__c_"  # none sure: the best alone


def test_an_eos_in_the_decided_prefix_ends_the_answer_before_it():
    seq = start(gen=4, block=4, steps=2)
    assert step(seq, [1, 2, EOS, 4], [0.9, 0.8, 0.7, 0.2]) == "ab__"
    assert streamed(seq) == [("ab", 2, False, None)]
    assert step(seq, [1, 2, EOS, 4], [0.9, 0.8, 0.7, 0.2]) == "ab$d"
    assert streamed(seq) == [("", 2, True, "stop")] and seq.finished


def test_a_block_cut_short_by_max_tokens_and_the_context_the_penalty_counts():
    seq = start(gen=6, block=4, steps=4, prompt=(9, 9, 9))
    assert seq.block_range() == (0, 4)
    step(seq, [1, 2, 3, 4, 5, 6], [0.9, 0.8, 0.3, 0.2, 0.1, 0.1])
    assert decided(seq) == "ab____" and seq.context_ids().tolist() == [9, 9, 9, 1, 2]
    step(seq, [1, 2, 3, 4, 5, 6], [0.9, 0.8, 0.3, 0.2, 0.1, 0.1])
    assert seq.block_range() == (4, 6) and decided(seq) == "abcd__"
    step(seq, [1, 2, 3, 4, 5, 6], [0.1] * 6)
    assert decided(seq) == "abcd_f" or decided(seq) == "abcde_"
    step(seq, [1, 2, 3, 4, 5, 6], [0.1] * 6)
    assert decided(seq) == "abcdef" and seq.passes_per_block == [2, 2]


# ---- the ultra-fast policies ---------------------------------------------------------------------
def test_no_text_before_pass_first_token_steps_and_then_the_instant_reveal_decides_the_sure_run():
    seq = start(gen=8, block=4, ultra=dict(enable_instant_first_token=True, first_token_steps=2,
                                           first_token_confidence_threshold=0.7, steps_per_block=4))
    probs = [0.1, 0.2, 0.3, 0.95, 0.1, 0.1, 0.1, 0.1]
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "___d____" and streamed(seq) == []
    # pass 2: from the cursor, every token over 0.7 up to the first that is not (the whole answer, not the block)
    probs = [0.9, 0.8, 0.75, 0.1, 0.9, 0.9, 0.3, 0.9]
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "abcdef__"  # d, decided, does not break the run
    assert streamed(seq) == [("abcdef", 6, False, None)] and seq.revealed
    seq2 = start(gen=8, block=4, ultra=dict(enable_instant_first_token=True, first_token_steps=1,
                                            first_token_confidence_threshold=0.7, steps_per_block=4))
    assert step(seq2, [1, 2, 3, 4, 5, 6, 7, 8], [0.5, 0.99] + [0.1] * 6) == "a_______"  # at least the cursor
    assert step(seq2, [1, 2, 3, 4, 5, 6, 7, 8], [0.9] * 8) != "abcdefgh"  # once only: then the block schedule


def test_the_first_pass_streams_nothing_even_with_the_reveal_off_but_the_whole_answer_at_once_does():
    seq = start(gen=4, block=4, ultra=dict(first_token_steps=2, steps_per_block=4, schedule="uniform"))
    assert step(seq, ABCD, [0.9, 0.1, 0.1, 0.1]) == "a___" and streamed(seq) == []
    assert step(seq, ABCD, [0.9, 0.9, 0.1, 0.1]) == "ab__" and streamed(seq) == [("ab", 2, False, None)]
    seq = start(gen=2, block=2, steps=1, ultra=dict(first_token_steps=3, min_steps=1, max_steps=1))
    assert step(seq, [1, 2], [0.5, 0.5]) == "ab" and streamed(seq) == [("ab", 2, True, "length")]


def test_confident_leading_tokens_stream_beyond_the_schedule():
    seq = start(gen=8, block=8, ultra=dict(stream_confidence_threshold=0.8, steps_per_block=8))
    # the schedule owes 1 token (pos 5, the most probable); the run from the cursor over 0.8 joins it
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.85, 0.9, 0.8, 0.9, 0.1, 0.99, 0.1, 0.1]) == "ab___f__"
    assert streamed(seq) == [("ab", 2, False, None)]


def test_the_stall_fallback_decides_the_cursor_once_enough_tokens_were_decided_past_it():
    seq = start(gen=8, block=8, ultra=dict(stream_every_n_tokens=2, steps_per_block=8))
    probs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "_______h"
    assert seq.decided_without_progress == 1
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "a_____gh"  # 2 decided past the cursor: it is decided
    assert streamed(seq) == [("a", 1, False, None)] and seq.decided_without_progress == 0
    seq = start(gen=8, block=8, ultra=dict(stream_every_n_tokens=3, steps_per_block=8))
    step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs)
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "______gh"
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], probs) == "a____fgh"  # the third past it, counted over passes


def test_early_stop_decides_everything_once_sure_enough_after_min_steps_and_min_progress():
    ultra = dict(enable_early_stop=True, min_steps=2, early_stop_min_progress=0.5, early_stop_confidence=0.9,
                 steps_per_block=4, max_steps=8)
    sure = [0.99, 0.98, 0.97, 0.96]
    seq = start(gen=4, block=4, ultra=ultra)
    assert step(seq, ABCD, sure) == "a___"  # pass 1 < min_steps
    assert step(seq, ABCD, sure) == "ab__"  # progress 1/4 < 0.5
    assert step(seq, ABCD, [0.99, 0.99, 0.8, 0.88]) == "ab_d"  # the undecided's mean 0.84: not yet
    seq = start(gen=4, block=4, ultra=ultra)
    step(seq, ABCD, sure)
    step(seq, ABCD, sure)
    assert step(seq, ABCD, [0.99, 0.99, 0.93, 0.97]) == "abcd"  # mean 0.95: everything
    seq = start(gen=8, block=4, ultra=dict(ultra, early_stop_min_progress=0.25))
    many = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92]
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], many) == "a_______"
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], many) == "ab______"  # progress 1/8 < 0.25
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], many) == "abcdefgh"  # beyond the block too


def test_min_steps_keeps_positions_undecided_until_the_owed_passes_are_made():
    seq = start(gen=4, block=4, ultra=dict(min_steps=3, steps_per_block=1, max_steps=8))
    # the block's one allowed pass would decide all 4; 2 more passes are owed, so 2 stay undecided, the
    # ones that do not extend the prefix first
    assert step(seq, ABCD, [0.2, 0.9, 0.8, 0.99]) == "ab__"
    assert step(seq, ABCD, [0.2, 0.9, 0.8, 0.99]) == "abc_"
    assert step(seq, ABCD, [0.2, 0.9, 0.8, 0.99]) == "abcd" and seq.nfe == 3


def test_max_steps_makes_the_last_pass_decide_everything_and_score_the_whole_canvas():
    seq = start(gen=8, block=2, steps=3, ultra=dict(min_steps=1, max_steps=8, steps_per_block=4))
    assert seq.budget.max_passes == 3
    step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.9] * 8)
    step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.9] * 8)
    assert decided(seq) == "ab______"  # the block's allowance: 3 passes (the cap), 1 token a pass
    assert seq._eligible(3).tolist() == [False] * 2 + [True] * 6  # the last pass looks beyond the block
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.1] * 8) == "abcdefgh" and seq.finish_reason == "length"


def test_unspent_passes_of_a_block_carry_to_the_next_under_ultra_fast():
    seq = start(gen=8, block=4, ultra=dict(stream_confidence_threshold=0.5, steps_per_block=2, max_steps=16))
    assert step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.9] * 8) == "abcd____"  # one pass of its two
    assert seq.block_allowance == 3 and seq.passes_per_block == [1]


def test_the_front_loaded_schedule_decides_one_then_two_then_four():
    seq = start(gen=8, block=8, ultra=dict(schedule="front_loaded", steps_per_block=4))
    tokens, probs = [1, 2, 3, 4, 5, 6, 7, 8], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert step(seq, tokens, probs) == "_______h"
    assert step(seq, tokens, probs) == "_____fgh"
    assert step(seq, tokens, probs) == "_bcdefgh"
    assert seq.block_schedule == [1, 2, 4, 1]


def test_at_least_one_position_is_decided_when_the_schedule_owes_none():
    seq = start(gen=4, block=4, ultra=dict(steps_per_block=8))
    assert seq.block_schedule == [1, 1, 1, 1]
    seq.block_schedule = [0, 0, 4]  # a schedule owing nothing yet still decides one a pass
    assert step(seq, ABCD, [0.2, 0.3, 0.9, 0.1]) == "__c_"


# ---- what a pass samples, the plan, the draft -----------------------------------------------------
def test_a_pass_samples_only_the_positions_a_policy_may_decide():
    seq = start(gen=8, block=4, steps=8)
    assert seq.samples_next(ForwardPlan(0, 10)) == 4  # the block's undecided positions
    assert seq.samples_next(ForwardPlan(4, 10)) == 2  # of those, the plan scores answer positions 2..
    step(seq, [1] * 8, [0.9] + [0.1] * 7)
    assert seq.samples_next(ForwardPlan(0, 10)) == 3 and seq.sampled == 4
    draft = start(gen=8, block=4, steps=8, draft=True)
    assert draft.samples_next(ForwardPlan(0, 10)) == 8  # a draft shows every undecided position


def test_the_draft_is_the_answer_with_each_undecided_position_guessed_up_to_an_unscored_one_or_eos():
    seq = start(gen=8, block=8, steps=8, draft=True)
    seq.advance(logits([1, 2, 3, 4, 5, 6, 7, 8], [0.9] + [0.5] * 7)[:6], 0)  # positions 6, 7 not scored
    (chunk,) = seq.drain()
    assert (chunk.new_text, chunk.draft) == ("a", "bcdef")
    seq.advance(logits([1, 2, 3, EOS, 5, 6, 7, 8], [0.1, 0.9] + [0.5] * 6), 0)
    (chunk,) = seq.drain()
    assert (chunk.new_text, chunk.draft) == ("b", "c")  # up to the guessed EOS
    capped = start(gen=8, block=8, steps=8, draft=True, max_draft_tokens=3)
    assert capped.samples_next(ForwardPlan(0, 10)) == 8  # the whole block is eligible anyway
    capped.advance(logits([1, 2, 3, 4, 5, 6, 7, 8], [0.9] + [0.5] * 7), 0)
    assert capped.drain()[0].draft == "bcd"  # 3 positions from the cursor (1, after a)


def test_a_draft_never_follows_the_final_chunk_nor_an_error():
    seq = start(gen=2, block=2, steps=1, draft=True)
    seq.advance(logits([1, 2], [0.9, 0.9]), 0)
    (chunk,) = seq.drain()
    assert chunk.is_final and chunk.draft == ""
    seq = start(gen=4, block=4, steps=4, draft=True)
    seq.fail(RuntimeError("x"))
    seq.advance(logits(ABCD, [0.5] * 4), 0)
    assert all(c.draft is None for c in seq.drain())


def test_a_cached_sequence_plans_slices_and_refreshes_when_its_block_moves():
    options = DiffusionOptions(ultra_fast=False, steps=4, block_length=2, cache="prefix")
    seq = FAMILY.start(GenerationRequest([5, 6], SamplingParams(max_tokens=4), options))
    assert seq.forward_plan() == ForwardPlan(0, 6, refresh=True)
    kv = [(torch.zeros(1, 6, 2), torch.zeros(1, 6, 2))]
    seq.keep_kv(kv)
    plan = seq.forward_plan()
    assert (plan.start, plan.end, plan.refresh, plan.context_len) == (2, 6, False, 2)
    step(seq, ABCD, [0.9] * 4)
    step(seq, ABCD, [0.9] * 4)
    assert seq.block_index == 1 and seq.forward_plan().refresh
    ultra = DiffusionOptions(steps=2, block_length=2, cache="prefix",
                             ultra_fast_config=UltraFastConfig(**{**OFF, "min_steps": 1, "max_steps": 2}))
    seq = FAMILY.start(GenerationRequest([5, 6], SamplingParams(max_tokens=4), ultra))
    seq.keep_kv(kv)
    assert seq.forward_plan().refresh is False
    step(seq, ABCD, [0.9] * 4)
    assert seq.forward_plan() == ForwardPlan(0, 6)  # the budget's last pass scores the whole canvas


def test_min_tokens_keeps_eos_out_of_the_first_answer_positions():
    seq = start(gen=4, block=4, steps=1, min_tokens=2)
    step(seq, [EOS] * 4, [0.9] * 4)
    assert decided(seq)[:2] != "$$" and "$" in decided(seq)[2:]


# ---- survivors of the first mutation run -----------------------------------------------------------
def test_a_later_pass_decides_what_the_schedule_still_owes_among_the_undecided_only():
    seq = start(gen=4, block=4, steps=2)  # 2 a pass
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "_b_d"
    seq = start(gen=4, block=4, steps=4)
    assert step(seq, ABCD, [0.5, 0.9, 0.6, 0.7]) == "_b__"
    assert step(seq, ABCD, [0.8, 0.1, 0.6, 0.7]) == "ab__"  # one more, though b now scores lowest


def test_sampled_decisions_follow_the_requests_seed():
    def answer(seed):
        seq = start(gen=8, block=8, steps=8, temperature=1.0, seed=seed)
        while not seq.finished:
            step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.2] * 8)
        return seq.answer.tolist()

    assert answer(5) == answer(5) != answer(6)


def test_the_last_pass_the_budget_allows_scores_the_whole_canvas_and_only_that_one():
    options = DiffusionOptions(steps=3, block_length=4, cache="prefix",
                               ultra_fast_config=UltraFastConfig(**{**OFF, "min_steps": 1, "max_steps": 3}))
    seq = FAMILY.start(GenerationRequest([5, 6], SamplingParams(max_tokens=4), options))
    seq.keep_kv([(torch.zeros(1, 6, 2), torch.zeros(1, 6, 2))])
    assert seq.forward_plan().context is not None  # pass 1 of 3: the cached slice
    step(seq, ABCD, [0.9, 0.1, 0.1, 0.1])
    assert seq.forward_plan().context is not None  # pass 2 of 3: still the slice
    step(seq, ABCD, [0.9, 0.9, 0.1, 0.1])
    assert seq.forward_plan() == ForwardPlan(0, 6)  # pass 3: the last


def test_a_plan_ending_before_the_answers_end_samples_only_its_positions():
    seq = start(gen=8, block=4, steps=8, draft=True)
    assert seq.samples_next(ForwardPlan(0, 6)) == 4  # prompt 2 + answer positions 0..3


def test_a_draft_samples_max_draft_tokens_from_the_cursor_beyond_the_block():
    seq = start(gen=8, block=2, steps=8, draft=True, max_draft_tokens=3)
    assert seq.samples_next(ForwardPlan(0, 10)) == 3  # the block (0, 1) and the draft's 0..2


def test_the_reveal_pass_and_no_other_samples_beyond_the_block():
    seq = start(gen=8, block=4, ultra=dict(enable_instant_first_token=True, first_token_steps=2, steps_per_block=4))
    assert seq.samples_next(ForwardPlan(0, 10)) == 4  # pass 1: the block
    step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.1, 0.2, 0.3, 0.9, 0.1, 0.1, 0.1, 0.1])
    assert seq.samples_next(ForwardPlan(0, 10)) == 7  # pass 2 reveals: every undecided position
    step(seq, [1, 2, 3, 4, 5, 6, 7, 8], [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert seq.revealed and seq.samples_next(ForwardPlan(0, 10)) == 2  # after it: the block's undecided


def test_early_stop_samples_beyond_the_block_only_when_on_from_min_steps():
    off = start(gen=8, block=4, ultra=dict(enable_early_stop=False, early_stop_min_progress=0.0, steps_per_block=4))
    assert off.samples_next(ForwardPlan(0, 10)) == 4
    on = start(gen=8, block=4, ultra=dict(enable_early_stop=True, early_stop_min_progress=0.0, min_steps=2,
                                          steps_per_block=4))
    assert on.samples_next(ForwardPlan(0, 10)) == 4  # pass 1 < min_steps
    step(on, [1, 2, 3, 4, 5, 6, 7, 8], [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert on.samples_next(ForwardPlan(0, 10)) == 7  # pass 2 = min_steps: early stop may look everywhere


def test_a_draft_reads_through_token_zero_and_honours_the_requests_special_token_choice():
    from tests.engine.byte_tokenizer import ByteTokenizer

    pieces = [b"a", b"b", b" .", b"d"] + [b"x"] * 19  # id 3 is " ." (a tokenizer's clean-up would eat its space)
    for skip, want in [(True, "b .d"), (False, "b<|endoftext|> .d")]:
        seq = start(gen=5, block=5, steps=5, draft=True, skip_special_tokens=skip)
        seq.detokenizer.tokenizer = ByteTokenizer(pieces)
        seq.eos_ids = frozenset({22})  # token 0 is an ordinary (special) token here, not the end
        step(seq, [1, 2, 0, 3, 4], [0.9, 0.5, 0.5, 0.5, 0.5])
        assert seq.drain()[-1].draft == want, skip


def test_each_block_counts_its_own_passes():
    seq = start(gen=12, block=4, steps=6)
    while not seq.finished:
        step(seq, list(range(1, 13)), [0.9 - 0.05 * i for i in range(12)])
    assert seq.passes_per_block == [2, 2, 2]


def test_confident_tokens_stream_through_positions_decided_earlier():
    seq = start(gen=4, block=4, ultra=dict(stream_confidence_threshold=0.8, steps_per_block=4))
    assert step(seq, ABCD, [0.5, 0.95, 0.5, 0.5]) == "_b__"
    assert step(seq, ABCD, [0.95, 0.1, 0.9, 0.85]) == "abcd"  # a by the schedule; b decided; c, d sure
