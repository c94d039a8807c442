"""One DiffusionGemma request (``engine/block/sequence.py``) on a stub model whose logits the test writes:
when a canvas ends and what it streams, what the next decoder pass receives (kept and renoised tokens,
the tempered logits as self-conditioning), and the ultra-fast early commits, early stop and the draft."""

from __future__ import annotations

import pytest
import torch

from dfast_serve.engine import EngineCore, GenerationRequest, SamplingParams
from dfast_serve.engine.block.family import BlockDiffusion
from dfast_serve.models.diffusion_gemma import GemmaSampling
from dfast_serve.wire import DiffusionOptions, UltraFastConfig
from tests.engine.block.stub import DOT, EOS, PAD, Stub, peaked

STANDARD = DiffusionOptions(ultra_fast=False)
QUIET = dict(enable_instant_first_token=False, enable_early_stop=False, hold_steps=50)


def sure(*canvas, gap=50.0):
    return lambda calls, canvases: peaked(list(canvas), gap, rows=len(canvases))


def run(model, max_tokens=4, options=STANDARD, **params):
    """Step one request to its end; its sequence and chunks."""
    family = BlockDiffusion(model)
    seq = family.start(GenerationRequest([3, 4], SamplingParams(max_tokens=max_tokens, **params), options))
    engine, chunks = EngineCore(family), []
    while not seq.finished:
        assert seq.nfe < 100
        engine.step_sequences([seq])
        assert seq.error is None, seq.error
        chunks += seq.drain()
    return seq, chunks


def sent(chunks):
    return [(c.nfe, c.new_text, c.total_tokens, c.finish_reason) for c in chunks if c.new_text or c.is_final]


def ultra(**config):
    return DiffusionOptions(ultra_fast_config=UltraFastConfig(**{**QUIET, **config}))


def test_a_standard_canvas_streams_its_argmax_when_its_steps_end_and_the_last_canvas_only_its_head():
    seq, chunks = run(Stub(sure(5, 6, 7, 8)), max_tokens=6)
    assert sent(chunks) == [(3, "w5 w6 w7 w8 ", 4, None), (6, "w5 w6 ", 6, "length")]
    assert seq.passes_per_block == [3, 3] and seq.progress() == 1.0 and seq.limit == 2


def test_the_models_stop_ends_a_canvas_once_its_argmax_is_stable_and_sure():
    stop = GemmaSampling(max_denoising_steps=6, stability_threshold=1, confidence_threshold=0.01)
    seq, _ = run(Stub(sure(5, 6, 7, 8), sampling=stop))
    assert seq.passes_per_block == [2]  # pass 2 equals pass 1 and every entropy is ~0
    seq, _ = run(Stub(sure(5, 6, 7, 8), sampling=GemmaSampling(6, stability_threshold=2, confidence_threshold=0.01)))
    assert seq.passes_per_block == [3]
    seq, _ = run(Stub(sure(5, 6, 7, 8, gap=4.0), sampling=stop))
    assert seq.passes_per_block == [6]  # not sure enough: every step


def test_an_eos_ends_the_answer_and_nothing_more_is_encoded():
    model = Stub(sure(5, EOS, 7, 8))
    seq, chunks = run(model, max_tokens=8)
    assert sent(chunks) == [(3, "w5 ", 1, "stop")] and len(model.encoded) == 1


def test_the_next_pass_keeps_the_accepted_tokens_and_renoises_the_rest():
    model = Stub(sure(5, 6, None, None))
    run(model, temperature=0.0)
    # sorted by entropy: 5 and 6 (~0), then a flat position, accepted as the run's excluded largest; the other not
    second = model.denoised[1].canvases[0].tolist()
    assert second[:2] == [5, 6] and second[2] == 0  # the greedy token of a flat row: the first
    third = model.denoised[2].canvases[0].tolist()
    assert third[:3] == [5, 6, 0]


def test_the_tempered_logits_are_the_next_passes_self_conditioning():
    for temperature, scale in [(1.0, 1.0), (2.0, 2.0), (0.5, 0.5), (0.0, 1.0)]:
        model = Stub(sure(5, 6, 7, 8, gap=3.0))
        run(model, temperature=temperature, seed=1)
        t1, t2 = 0.4 + 0.4 * 3 / 3, 0.4 + 0.4 * 2 / 3  # the schedule: t_max at pass 1, falling to t_min
        assert model.denoised[0].self_conditioning is None
        assert torch.allclose(model.denoised[1].self_conditioning[0], peaked([5, 6, 7, 8], 3.0)[0] / (t1 * scale))
        assert torch.allclose(model.denoised[2].self_conditioning[0], peaked([5, 6, 7, 8], 3.0)[0] / (t2 * scale))


def test_sampling_follows_the_seed_and_greedy_ignores_it():
    def canvases(temperature, seed):
        model = Stub(sure(None, None, None, None))
        run(model, temperature=temperature, seed=seed)
        return [d.canvases.tolist() for d in model.denoised]

    assert canvases(1.0, 1) == canvases(1.0, 1) != canvases(1.0, 2)
    assert all(len(c) == 1 and len(c[0]) == 4 for c in canvases(1.0, 3))  # one canvas row a pass
    assert canvases(0.0, 1)[1:] != canvases(1.0, 1)[1:]
    first = canvases(0.0, 1)
    assert canvases(0.0, 1) == first


def test_a_sampled_step_hands_the_decoder_one_canvas_row_of_tokens_keeping_the_sure_ones():
    model = Stub(sure(5, 6, None, None))
    run(model, temperature=1.0, seed=3)
    assert [tuple(d.canvases.shape) for d in model.denoised] == [(1, 4)] * 3
    assert all(d.canvases[0, :2].tolist() == [5, 6] for d in model.denoised[1:])


def test_a_token_held_for_hold_steps_is_committed_and_frozen():
    calls = []

    def logits(n, canvases):
        calls.append(n)
        return peaked([5, 6, None, None] if n <= 2 else [9, 9, 9, 9], 50.0)

    seq, chunks = run(Stub(logits), options=ultra(hold_steps=2, first_token_steps=1))
    assert sent(chunks) == [(2, "w5 w6 ", 2, None), (3, "w9 w9 ", 4, "length")]  # 5 and 6 stay
    assert seq.detokenizer.token_ids == [5, 6, 9, 9]


def test_no_early_commit_before_first_token_steps_and_the_instant_reveal_only_in_the_first_canvas():
    model = Stub(sure(5, 6, None, 8), sampling=GemmaSampling(max_denoising_steps=4, stability_threshold=None,
                                                             confidence_threshold=None))
    _, chunks = run(model, max_tokens=8, options=ultra(enable_instant_first_token=True, first_token_steps=2))
    # pass 2: the sure run from the cursor (5, 6); the rest when the canvas ends; the second canvas reveals
    # nothing early (its first pass is pass 5, and the reveal is the first canvas's)
    assert sent(chunks)[:2] == [(2, "w5 w6 ", 2, None), (4, "w8 ", 4, None)]  # w0 is the pad: special
    assert sent(chunks)[2][0] == 8
    _, chunks = run(model, options=ultra(enable_instant_first_token=True, first_token_steps=1))
    assert sent(chunks)[0] == (1, "w5 w6 ", 2, None)


def test_a_committed_run_never_passes_the_answers_end():
    model = Stub(sure(5, 6, 7, 8), sampling=GemmaSampling(max_denoising_steps=4, stability_threshold=None,
                                                         confidence_threshold=None))
    seq, chunks = run(model, max_tokens=6, options=ultra(enable_instant_first_token=True, first_token_steps=1))
    # the second canvas reveals nothing early (the reveal is the first canvas's): its head at its end
    assert sent(chunks) == [(1, "w5 w6 w7 w8 ", 4, None), (8, "w5 w6 ", 6, "length")]
    assert seq.passes_per_block == [4, 4]


def test_early_stop_ends_a_stable_sure_canvas_before_its_steps():
    model = Stub(sure(5, 6, 7, 8, gap=8.0), sampling=GemmaSampling(6, stability_threshold=None,
                                                                  confidence_threshold=None))
    seq, _ = run(model, options=ultra(enable_early_stop=True, early_stop_confidence=0.95))
    assert seq.passes_per_block == [2]
    seq, _ = run(model, options=ultra(enable_early_stop=True, early_stop_confidence=1.0))
    assert seq.passes_per_block == [6]


def test_the_draft_is_the_argmax_canvas_after_the_sent_text_up_to_an_eos():
    seq, chunks = run(Stub(sure(5, 6, EOS, 8)), draft=True)
    assert [c.draft for c in chunks] == ["w5 w6 ", "w5 w6 ", ""]
    seq, chunks = run(Stub(sure(5, 6, 7, 8), sampling=GemmaSampling(3, stability_threshold=None,
                                                                    confidence_threshold=None)),
                      max_tokens=6, draft=True, options=ultra(enable_instant_first_token=True, first_token_steps=2))
    assert [(c.nfe, c.new_text, c.draft) for c in chunks][:2] == [(1, "", "w5 w6 w7 w8 "), (2, "w5 w6 w7 w8 ", "")]


@pytest.mark.parametrize("cursor, block, expected", [(0, 0, 0.0), (2, 0, 0.25), (0, 1, 0.5), (4, 1, 1.0)])
def test_progress_counts_the_committed_positions_of_the_answer(cursor, block, expected):
    seq = BlockDiffusion(Stub(sure(5, 6, 7, 8))).start(GenerationRequest([3], SamplingParams(max_tokens=8)))
    seq.cursor, seq.block_index = cursor, block
    assert seq.progress() == expected


def test_a_canvas_starts_as_noise_over_the_whole_vocabulary():
    model = Stub(sure(*[1] * 16), canvas_length=16, vocab_size=2)
    run(model)
    assert set(model.denoised[0].canvases[0].tolist()) == {0, 1}


def test_three_canvases_stream_in_order_the_last_cut_to_max_tokens():
    seq, chunks = run(Stub(sure(5, 6, 7, 8)), max_tokens=10)
    assert sent(chunks) == [(3, "w5 w6 w7 w8 ", 4, None), (6, "w5 w6 w7 w8 ", 8, None), (9, "w5 w6 ", 10, "length")]
    assert seq.passes_per_block == [3, 3, 3]


def test_early_stop_reads_each_positions_own_distribution():
    model = Stub(sure(5, 5, 5, 5, gap=8.0), sampling=GemmaSampling(6, stability_threshold=None,
                                                                  confidence_threshold=None))
    seq, _ = run(model, options=ultra(enable_early_stop=True, early_stop_confidence=0.95))
    assert seq.passes_per_block == [2]


def test_the_instant_reveal_happens_once_later_sure_tokens_wait_to_be_held():
    def logits(n, canvases):
        return peaked([5, None, None, None] if n == 1 else [5, 6, None, None], 50.0)

    model = Stub(logits, sampling=GemmaSampling(4, stability_threshold=None, confidence_threshold=None))
    _, chunks = run(model, options=ultra(enable_instant_first_token=True, first_token_steps=1))
    assert sent(chunks)[0] == (1, "w5 ", 1, None)  # a run of one is committed too
    assert sent(chunks)[1][0] == 4  # 6 waits for the canvas's end (hold_steps 50), no second reveal


def test_later_early_commits_continue_from_the_cursor_and_stay_frozen():
    def logits(n, canvases):
        return peaked([5, 6, None, None] if n <= 2 else [9, 9, 9, 9], 50.0)

    model = Stub(logits, sampling=GemmaSampling(5, stability_threshold=None, confidence_threshold=None))
    seq, chunks = run(model, options=ultra(hold_steps=2, first_token_steps=1))
    assert sent(chunks) == [(2, "w5 w6 ", 2, None), (4, "w9 w9 ", 4, "length")]
    assert all(d.canvases[0, :2].tolist() == [5, 6] for d in model.denoised[2:])  # frozen once committed


def test_an_early_commit_that_reaches_max_tokens_ends_the_answer_there():
    seq, chunks = run(Stub(sure(5, 6, 7, 8)), options=ultra(enable_instant_first_token=True, first_token_steps=1))
    assert sent(chunks) == [(1, "w5 w6 w7 w8 ", 4, "length")]


def test_the_draft_honours_the_requests_special_token_choice_without_cleaning_up_spaces():
    for skip, want in [(True, "w5 w7 . "), (False, "w5 w0 w7 . ")]:
        _, chunks = run(Stub(sure(5, PAD, 7, DOT)), draft=True, skip_special_tokens=skip)
        assert chunks[0].draft == want, skip


def test_a_token_counts_as_held_one_step_more_each_step_it_is_accepted():
    model = Stub(sure(5, 6, 7, 8), sampling=GemmaSampling(5, stability_threshold=None, confidence_threshold=None))
    _, chunks = run(model, options=ultra(hold_steps=3, first_token_steps=1))
    assert sent(chunks)[0] == (3, "w5 w6 w7 w8 ", 4, "length")  # held 1, 2, 3: committed at pass 3


def test_a_rejected_position_starts_its_hold_afresh_when_accepted():
    # renoise draws only token 0 (vocab_size 1): a rejected position's noise is the token later drawn there
    def logits(n, canvases):
        out = peaked([None, 6, 7, 8], 50.0)
        if n == 1:
            out[0, 1, :] = torch.linspace(0.0, 1.0, 32)  # unsure: accepted as the run's excluded largest
        else:
            out[0, 0, 0] = 50.0  # position 0, rejected at pass 1 (the flattest), now sure of token 0
        return out

    model = Stub(logits, vocab_size=1, sampling=GemmaSampling(5, stability_threshold=None, confidence_threshold=None))
    _, chunks = run(model, options=ultra(hold_steps=2, first_token_steps=1), skip_special_tokens=False, seed=1)
    assert sent(chunks)[0][:2] == (3, "w0 w6 w7 w8 ")  # held 1 at pass 2, 2 at pass 3


def test_early_stop_at_a_confidence_of_one_stops_when_every_top_probability_is_one():
    model = Stub(sure(5, 6, 7, 8, gap=50.0), sampling=GemmaSampling(6, stability_threshold=None,
                                                                   confidence_threshold=None))
    seq, _ = run(model, options=ultra(enable_early_stop=True, early_stop_confidence=1.0))
    assert seq.passes_per_block == [2]


def test_no_draft_is_sent_unless_the_request_asks_for_one():
    _, chunks = run(Stub(sure(5, 6, 7, 8)), max_tokens=6)
    assert [c.draft for c in chunks] == [None] * len(chunks) and len(sent(chunks)) == len(chunks)
    _, chunks = run(Stub(sure(5, 6, 7, 8)), max_tokens=6, options=ultra(enable_instant_first_token=True,
                                                                         first_token_steps=2))
    assert all(c.draft is None for c in chunks)
