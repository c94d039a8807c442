"""A sequence's stream (``engine/sequence.py``) and the token choice beneath it (sampling, the
diffusion proposal, confidences), on tokens and logits the test chooses: the exact chunks, text and
usage at EOS, at a stop string and at ``max_tokens``; which logits are banned or cut."""

import math
import time

import pytest
import torch

from dfast_serve.engine.detokenize import StreamingDetokenizer
from dfast_serve.engine.masked.confidence import confidence_of
from dfast_serve.engine.masked.policies import everything
from dfast_serve.engine.masked.proposal import propose
from dfast_serve.engine.request import GenerationRequest
from dfast_serve.engine.sampling import (apply_min_p, choose_tokens, filter_logits, make_generator,
                                         penalize_repetition)
from dfast_serve.engine.sequence import Sequence
from dfast_serve.wire import DiffusionOptions, SamplingParams
from tests.engine.byte_tokenizer import EOS, ByteTokenizer

WORDS = [b"The", b" sky", b" is", b" blue", b"."]  # ids 1..5; 0 is <|endoftext|>


class Seq(Sequence):
    def progress(self) -> float:
        return 0.25


def sequence(stop=(), skip_special_tokens=True, max_tokens=5, prompt=(7, 8, 9), **params) -> Seq:
    request = GenerationRequest(list(prompt), SamplingParams(max_tokens=max_tokens, stop=list(stop),
                                                             skip_special_tokens=skip_special_tokens, **params))
    # the engine builds the detokenizer with the default; the request's choice must reach it
    return Seq(request, StreamingDetokenizer(ByteTokenizer(WORDS), list(stop)), frozenset({EOS}),
               make_generator(0, torch.device("cpu")))


def summary(chunks):
    return [(c.new_text, c.new_tokens, c.total_tokens, c.is_first, c.is_final, c.finish_reason) for c in chunks]


def test_an_eos_ends_the_answer_and_is_neither_text_nor_usage():
    seq = sequence()
    seq.emit([1, 2], exhausted=False)
    seq.emit([3, EOS, 4], exhausted=False)
    chunks = seq.drain()
    assert summary(chunks) == [("The sky", 2, 2, True, False, None), (" is", 1, 3, False, True, "stop")]
    assert seq.finished and seq.finish_reason == "stop"
    assert chunks[-1].progress == 1.0 and chunks[0].progress == 0.25
    assert chunks[-1].prompt_tokens == 3 and chunks[-1].target_tokens == 5


def test_an_eos_is_not_in_the_text_even_when_special_tokens_are_kept():
    seq = sequence(skip_special_tokens=False)
    assert not seq.detokenizer.skip_special_tokens
    seq.emit([1, EOS], exhausted=False)
    assert summary(seq.drain()) == [("The", 1, 1, True, True, "stop")]


def test_an_eos_first_ends_with_an_empty_final_chunk():
    seq = sequence()
    seq.emit([EOS, 1], exhausted=False)
    assert summary(seq.drain()) == [("", 0, 0, True, True, "stop")]


def test_max_tokens_reached_is_length_and_counts_every_token():
    seq = sequence(max_tokens=5)
    seq.emit([1, 2, 3], exhausted=False)
    seq.emit([4, 5], exhausted=True)
    assert summary(seq.drain()) == [("The sky is", 3, 3, True, False, None), (" blue.", 2, 5, False, True, "length")]


def test_a_stop_string_ends_with_stop_and_counts_the_tokens_before_it():
    seq = sequence(stop=[" is"])
    seq.emit([1, 2, 3, 4], exhausted=False)
    assert summary(seq.drain()) == [("The sky", 2, 2, True, True, "stop")]


def test_held_back_text_makes_no_chunk_and_is_released_at_the_end():
    seq = sequence(stop=[" blues"])
    seq.emit([1], exhausted=False)
    seq.emit([4], exhausted=False)  # " blue" could begin " blues"
    assert summary(seq.drain()) == [("The", 1, 1, True, False, None)]
    seq.emit([5], exhausted=True)
    assert summary(seq.drain()) == [(" blue.", 2, 3, False, True, "length")]


def test_a_draft_rides_on_the_last_chunk_or_alone_and_never_on_the_final_one():
    seq = sequence()
    seq.attach_draft("guess")
    seq.emit([1], exhausted=False)
    seq.attach_draft("sky")
    chunks = seq.drain()
    assert [(c.new_text, c.new_tokens, c.total_tokens, c.draft, c.is_first) for c in chunks] == \
        [("", 0, 0, "guess", True), ("The", 1, 1, "sky", False)]
    seq.emit([2], exhausted=True)
    seq.attach_draft("x")
    assert [(c.new_text, c.draft) for c in seq.drain()] == [(" sky", "")]
    assert seq.chunks_sent == 3


def test_a_failed_sequence_is_finished():
    seq = sequence()
    assert not seq.finished
    seq.fail(RuntimeError("boom"))
    assert seq.finished and seq.finish_reason is None


# ---- logits shaping --------------------------------------------------------------------------------
def test_min_tokens_bans_eos_in_exactly_the_first_min_tokens_positions():
    seq = sequence(min_tokens=3)
    rows = seq.shape_logits(torch.zeros(6, 4), first_position=1)  # positions 1..6: 1 and 2 are under 3
    assert rows[:, EOS].tolist() == [-math.inf, -math.inf, 0, 0, 0, 0]
    assert bool((rows[:, 1:] == 0).all())
    row = seq.shape_logits(torch.zeros(4), first_position=2)  # a single (vocab,) row
    assert row.tolist() == [-math.inf, 0, 0, 0]
    assert seq.shape_logits(torch.zeros(4), first_position=3).tolist() == [0, 0, 0, 0]


def test_ignore_eos_bans_eos_everywhere():
    seq = sequence(ignore_eos=True)
    rows = seq.shape_logits(torch.zeros(3, 4), first_position=100)
    assert rows[:, EOS].tolist() == [-math.inf] * 3
    rows = seq.shape_logits(torch.zeros(6, 4), first_position=0)  # more positions than the vocabulary
    assert rows[:, EOS].tolist() == [-math.inf] * 6


def test_the_repetition_penalty_counts_the_prompt_and_the_answer_so_far():
    seq = sequence(prompt=(1,), repetition_penalty=2.0)
    seq.emit([2], exhausted=False)
    assert seq.context_ids().tolist() == [1, 2]
    logits = seq.shape_logits(torch.tensor([[4.0, 4.0, -4.0, 4.0]]), first_position=1)
    assert logits.tolist() == [[4.0, 2.0, -8.0, 4.0]]


def test_min_p_cuts_on_the_tempered_distribution():
    seq = sequence(min_p=0.5, temperature=1.0)
    logits = seq.shape_logits(torch.tensor([0.0, math.log(0.6), math.log(0.4)]), first_position=0)
    assert logits[2] == -math.inf and logits[1] == pytest.approx(math.log(0.6))


# ---- sampling ---------------------------------------------------------------------------------------
def test_greedy_picks_the_first_maximum_and_ignores_the_filters():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 1.0, 2.0, 0.0]])
    assert choose_tokens(logits, 0.0, None, top_k=1, top_p=0.1).tolist() == [1, 0]
    assert choose_tokens(logits, -1.0, None).tolist() == [1, 0]


def test_top_k_one_and_tiny_top_p_sample_the_argmax():
    gen = make_generator(3, torch.device("cpu"))
    logits = torch.tensor([[0.0, 0.1, 0.2, 5.0, 0.3]]).repeat(50, 1)
    assert set(choose_tokens(logits, 1.0, gen, top_k=1).tolist()) == {3}
    assert set(choose_tokens(logits, 1.0, gen, top_p=0.01).tolist()) == {3}
    assert set(choose_tokens(logits, 1.0, gen, top_k=2, top_p=0.01).tolist()) == {3}


def test_top_k_keeps_exactly_the_k_best():
    gen = make_generator(1, torch.device("cpu"))
    logits = torch.tensor([[0.0, 1.0, 1.1, 1.2, 0.5]]).repeat(400, 1)
    assert set(choose_tokens(logits, 1.0, gen, top_k=3).tolist()) == {1, 2, 3}
    assert set(choose_tokens(logits, 1.0, gen, top_k=5).tolist()) == {0, 1, 2, 3, 4}  # k = vocab: no filter


def test_top_p_keeps_the_token_that_crosses_it():
    gen = make_generator(2, torch.device("cpu"))
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(400, 1)
    assert set(choose_tokens(logits, 1.0, gen, top_p=0.7).tolist()) == {0, 1}
    assert set(choose_tokens(logits, 1.0, gen, top_p=0.5).tolist()) == {0}
    assert set(choose_tokens(logits, 1.0, gen, top_p=0.81).tolist()) == {0, 1, 2}
    assert filter_logits(probs.log(), 0, 0.7).isinf().tolist() == [False, False, True, True]
    assert filter_logits(probs.log(), 2, 1.0).isinf().tolist() == [False, False, True, True]
    assert filter_logits(probs.log(), 0, 1.0).isinf().tolist() == [False] * 4


def test_a_fixed_seed_repeats_and_no_seed_varies():
    logits = torch.zeros(64, 1000)
    a = choose_tokens(logits, 1.0, make_generator(5, torch.device("cpu")))
    b = choose_tokens(logits, 1.0, make_generator(5, torch.device("cpu")))
    c = choose_tokens(logits, 1.0, make_generator(None, torch.device("cpu")))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    assert penalize_repetition(logits, torch.tensor([0, 1, 1]), 4.0).tolist() == [[0.5, -8.0, 2.0]]
    assert penalize_repetition(torch.tensor([2.0]), torch.tensor([], dtype=torch.long), 4.0).tolist() == [2.0]
    assert penalize_repetition(torch.tensor([2.0]), torch.tensor([0]), 1.0).tolist() == [2.0]


def test_min_p_keeps_tokens_at_the_cut_and_is_off_when_greedy_or_zero():
    logits = torch.tensor([0.0, math.log(0.5), math.log(0.49)])
    out = apply_min_p(logits.clone(), 0.5, 1.0)
    assert out.isinf().tolist() == [False, False, True]
    out = apply_min_p(logits.clone(), 0.5, 2.0)  # T=2: p_i/p_max = sqrt(ratio), 0.7 for both
    assert out.isinf().tolist() == [False, False, False]
    assert not apply_min_p(logits.clone(), 0.5, 0.0).isinf().any()
    assert not apply_min_p(logits.clone(), 0.0, 1.0).isinf().any()
    rows = torch.tensor([[0.0, math.log(0.4), -9.0], [-9.0, 5.0, 5.0 + math.log(0.6)]])  # each row its own max
    assert apply_min_p(rows, 0.5, 1.0).isinf().tolist() == [[False, True, True], [True, False, False]]


# ---- proposal and confidence -----------------------------------------------------------------------
def test_confidences():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    proposed = torch.tensor([0.7, 0.25])
    assert confidence_of(probs, proposed, "probability") is proposed
    assert confidence_of(probs, proposed, "margin").tolist() == pytest.approx([0.5, 0.0])
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert confidence_of(probs, proposed, "entropy").tolist() == pytest.approx([math.exp(-entropy), 0.25])


def test_a_proposal_spreads_the_window_over_the_answer():
    logits = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    p = propose(logits, 1, 4, SamplingParams(temperature=0.0), DiffusionOptions(),
                make_generator(0, torch.device("cpu")))
    assert p.tokens.tolist() == [0, 1, 0, 0]
    assert p.known.tolist() == [False, True, True, False]
    assert everything(torch.ones(4, dtype=torch.bool), p.known).tolist() == [False, True, True, False]
    first = math.exp(2) / (math.exp(2) + 2)
    second = math.exp(3) / (math.exp(3) + 2)
    assert p.confidence.tolist() == pytest.approx([0.0, first, second, 0.0])
    assert p.certainty.tolist() == pytest.approx([0.0, first, second, 0.0])
    assert p.score[[0, 3]].tolist() == [-math.inf, -math.inf]
    assert p.score[1:3].tolist() == pytest.approx([first, second])


def test_a_proposal_samples_only_the_eligible_positions():
    logits = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    eligible = torch.tensor([True, False, True])
    p = propose(logits, 0, 3, SamplingParams(temperature=0.0), DiffusionOptions(confidence="margin"),
                make_generator(0, torch.device("cpu")), eligible)
    assert p.tokens.tolist() == [1, 0, 2]
    assert p.known.tolist() == [True, False, True]
    assert p.confidence[1] == 0.0 and p.score[1] == -math.inf
    assert p.certainty[2] == pytest.approx((math.exp(4) - 1) / (math.exp(4) + 2))


def test_random_remasking_ranks_at_random_not_by_confidence():
    logits = torch.tensor([[9.0, 0.0]] + [[0.0, 0.0]] * 63)
    options = DiffusionOptions(remasking="random")
    p = propose(logits, 0, 64, SamplingParams(temperature=0.0), options, make_generator(0, torch.device("cpu")))
    assert not torch.equal(p.score, p.certainty)
    assert bool(((p.score >= 0) & (p.score < 1)).all())


def test_the_repetition_penalty_applies_to_a_single_seen_token_and_to_small_positive_logits():
    assert penalize_repetition(torch.tensor([[0.5, 0.5]]), torch.tensor([1]), 2.0).tolist() == [[0.5, 0.25]]
    assert penalize_repetition(torch.tensor([0.0, -0.5]), torch.tensor([0, 1]), 2.0).tolist() == [0.0, -1.0]


def sampled_proposal(seed: int, **params):
    logits = torch.tensor([[1.0, 0.9, 0.8, 0.7, -3.0]]).repeat(200, 1)
    options = DiffusionOptions(remasking=params.pop("remasking", "low_confidence"))
    return propose(logits, 0, 200, SamplingParams(temperature=1.0, **params), options,
                   make_generator(seed, torch.device("cpu")))


def test_a_sampled_proposal_follows_the_requests_seed():
    a, b, c = sampled_proposal(11), sampled_proposal(11), sampled_proposal(12)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert len(set(a.tokens.tolist())) >= 4  # it really samples
    a, b = sampled_proposal(11, remasking="random"), sampled_proposal(11, remasking="random")
    assert torch.equal(a.score, b.score)


def test_a_sampled_proposal_honours_top_k_and_top_p():
    assert set(sampled_proposal(1, top_k=1).tokens.tolist()) == {0}
    assert set(sampled_proposal(1, top_k=2).tokens.tolist()) == {0, 1}
    assert set(sampled_proposal(1, top_p=0.01).tokens.tolist()) == {0}
    assert set(sampled_proposal(1, top_k=3, top_p=0.01).tokens.tolist()) == {0}


def test_only_the_very_first_chunk_is_first_and_chunks_carry_nfe_and_time():
    seq = sequence(max_tokens=5)
    seq.started = time.perf_counter() - 1000.0  # started 1000 s ago
    seq.nfe = 3
    seq.emit([1], exhausted=False)
    first = seq.drain()
    seq.nfe = 4
    seq.emit([2], exhausted=False)
    seq.emit([3], exhausted=False)
    later = seq.drain()
    assert [c.is_first for c in first + later] == [True, False, False]
    assert [c.nfe for c in first + later] == [3, 4, 4]
    assert all(1_000_000 <= c.time_ms < 1_000_500 for c in first + later)


def test_the_requests_skip_special_tokens_reaches_the_detokenizer_the_engine_built():
    """A special token that is not an EOS (here id 0, with no EOS id) is left out of the text by
    default, and kept when the request asks, whatever the detokenizer was built with."""
    for skip, built_with, text in ((True, False, "Thesky"), (False, True, "The<|endoftext|>sky")):
        request = GenerationRequest([7], SamplingParams(max_tokens=5, skip_special_tokens=skip))
        seq = Seq(request, StreamingDetokenizer(ByteTokenizer([b"The", b"sky"]), [], built_with), frozenset(),
                  make_generator(0, torch.device("cpu")))
        seq.emit([1, 0, 2], exhausted=True)
        assert "".join(c.new_text for c in seq.drain()) == text


def test_filter_logits_keeps_the_k_best_and_k_at_or_over_the_vocabulary_keeps_all():
    logits = torch.tensor([[0.1, 0.4, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1]])
    assert filter_logits(logits, 1).isinf().tolist() == [[True, False, True, True], [False, True, True, True]]
    assert filter_logits(logits, 3).isinf().tolist() == [[True, False, False, False], [False, False, False, True]]
    assert not filter_logits(logits, 4).isinf().any()
    assert not filter_logits(logits, 5).isinf().any()
    assert not filter_logits(logits).isinf().any()
