"""Diffusion sampling cost is bounded and counted (issue #24), in the engine: a draft samples at most
``max_draft_tokens`` positions past the cursor, and a pass's work counts its sampled positions beside its
canvas tokens, so a request sampling many positions gets fewer turns. (The sampler's own bounds and
exactness: ``test_sampling.py``.)
"""

from __future__ import annotations

from dfast_serve.engine import EngineLimits, GenerationRequest, SamplingParams, build_engine
from dfast_serve.wire.options import DiffusionOptions


def draft_request(model, max_tokens: int = 48) -> GenerationRequest:
    ids = model.encode_chat([{"role": "user", "content": "Recite Genesis 1:1."}])
    return GenerationRequest(ids, SamplingParams(max_tokens=max_tokens, draft=True, ignore_eos=True, seed=0),
                             DiffusionOptions(ultra_fast=False, block_length=8))


def test_a_draft_samples_at_most_max_draft_tokens_past_the_cursor(tiny_mdlm):
    uncapped = build_engine(tiny_mdlm)
    capped = build_engine(tiny_mdlm, limits=EngineLimits(max_draft_tokens=12))
    wide, narrow = uncapped.start(draft_request(tiny_mdlm)), capped.start(draft_request(tiny_mdlm))
    uncapped.step_sequences([wide])
    capped.step_sequences([narrow])
    assert wide.sampled == 48  # every undecided position, each pass
    assert narrow.sampled == 12  # the block's 8 are inside the cap
    assert int((narrow.guess >= 0).sum()) == 12 and bool((narrow.guess[12:] < 0).all())
    for _ in range(6):
        capped.step_sequences([narrow])
        assert narrow.sampled <= 12 and bool((narrow.guess[narrow.cursor + 12 :] < 0).all())
        chunk = narrow.drain()[-1]
        shown = tiny_mdlm.tokenizer.encode(chunk.draft, add_special_tokens=False)
        assert 0 < len(shown) <= 12 + 2  # a re-encoding may split a token or two differently
    # the stream itself is the same with or without the cap
    assert "".join(c.new_text for c in capped.generate(draft_request(tiny_mdlm))) == \
        "".join(c.new_text for c in uncapped.generate(draft_request(tiny_mdlm)))


def test_samples_next_predicts_what_the_pass_samples(tiny_mdlm):
    engine = build_engine(tiny_mdlm, limits=EngineLimits(max_draft_tokens=20))
    for request in (draft_request(tiny_mdlm), GenerationRequest(draft_request(tiny_mdlm).prompt_ids,
                                                                SamplingParams(max_tokens=40), DiffusionOptions())):
        seq = engine.start(request)
        while not seq.finished:
            predicted = seq.samples_next(seq.forward_plan())
            engine.step_sequences([seq])
            seq.drain()
            assert seq.sampled == predicted


def test_a_request_sampling_every_position_gets_fewer_turns(tiny_mdlm):
    """Same canvas, same passes' canvas tokens: the one sampling all 64 positions a pass (a block as
    long as the answer) against one sampling its 8-position block, both with top-p. Counting canvas
    tokens alone they would share every step; counting the sampling, the light one runs more often."""
    ids = tiny_mdlm.encode_chat([{"role": "user", "content": "Recite Psalms 23:1."}])
    params = SamplingParams(max_tokens=64, ignore_eos=True, temperature=1.0, top_p=0.9, seed=0)
    heavy = GenerationRequest(ids, params, DiffusionOptions(ultra_fast=False, block_length=64))
    light = GenerationRequest(ids, params, DiffusionOptions(ultra_fast=False, block_length=8))
    engine = build_engine(tiny_mdlm, max_batch_size=8, step_token_budget=4096)
    a, b = engine.start(heavy), engine.start(light)
    for _ in range(12):
        engine.step_sequences([a, b])
    assert b.nfe >= 2 * a.nfe > 0
    # each pass's work: its canvas tokens and 8 per sampled position (8192 / 1024); the heavy one's first
    # pass samples all 64, the light one's at most its block of 8
    assert a.work >= a.nfe * len(a.canvas) + 8 * 64 and b.work <= b.nfe * (len(b.canvas) + 8 * 8)


def test_greedy_and_plain_sampling_count_less_than_top_k_or_top_p(tiny_mdlm):
    engine = build_engine(tiny_mdlm)
    engine.family.vocab = 8192
    work = {}
    for label, params in {"greedy": SamplingParams(temperature=0.0, top_p=0.5), "plain": SamplingParams(temperature=1.0),
                          "top_p": SamplingParams(temperature=1.0, top_p=0.9),
                          "top_k": SamplingParams(temperature=1.0, top_k=20),
                          "top_k = vocab": SamplingParams(temperature=1.0, top_k=8192)}.items():
        seq = engine.start(GenerationRequest([5, 6], params))
        work[label] = engine.family.sampling_work(seq, 100)
    assert work == {"greedy": 25, "plain": 25, "top_p": 800, "top_k": 800, "top_k = vocab": 25}
