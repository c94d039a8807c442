"""Diffusion sampling cost is bounded and counted (issue #24).

Sampling draws over a candidate pre-selection (top-k/top-p) or the whole row in float32 (plain
temperature), in chunks of rows: no float64 tensor over the vocabulary, no temporary larger than a
chunk. A draft samples at most ``max_draft_tokens`` positions past the cursor. A pass's work counts
its sampled positions beside its canvas tokens, so a request sampling many positions gets fewer turns.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dfast_serve.engine import EngineLimits, GenerationRequest, SamplingParams, build_engine, sampling
from dfast_serve.engine.masked.proposal import propose
from dfast_serve.engine.sampling import choose_tokens, filter_logits
from dfast_serve.wire.options import DiffusionOptions


class TensorSizes(TorchDispatchMode):
    """Records (dtype, numel) of every tensor an op allocates (views of its inputs are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in list(args) + list((kwargs or {}).values())
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.seen.append((t.dtype, t.numel()))
        return out

    def largest(self, dtype: torch.dtype | None = None) -> int:
        return max((n for d, n in self.seen if dtype is None or d == dtype), default=0)


def peaked_logits(rows: int, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """A few strong tokens a row over a long flat tail: the nucleus fits the first candidates."""
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    logits[:, :8] += 30.0
    return logits.to(dtype)


def frequencies(drawn: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(drawn, minlength=vocab).double() / len(drawn)


def test_plain_temperature_draws_the_exact_softmax_over_the_whole_vocabulary():
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 1.5
    drawn = choose_tokens(logits.repeat(40000, 1), 2.0, torch.Generator().manual_seed(3))
    expected = (logits[0].double() / 2.0).softmax(-1)
    assert (frequencies(drawn, 50) - expected).abs().max() < 0.006
    assert set(drawn.tolist()) == set(range(50))  # no tail dropped: every token drawn at least once


def test_top_k_then_top_p_draws_the_exact_filtered_distribution():
    torch.manual_seed(1)
    logits = torch.randn(1, 40) * 2
    drawn = choose_tokens(logits.repeat(40000, 1), 1.5, torch.Generator().manual_seed(4), top_k=10, top_p=0.8)
    expected = filter_logits(logits.double() / 1.5, 10, 0.8)[0].softmax(-1)
    assert set(drawn.tolist()) == set(torch.nonzero(expected > 0)[:, 0].tolist())
    assert (frequencies(drawn, 40) - expected).abs().max() < 0.008


def test_rows_whose_candidates_fall_short_grow_them_and_still_draw_the_exact_nucleus(monkeypatch):
    """Flat rows need more than NUCLEUS_CANDIDATES; peaked rows in the same call do not."""
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 2)
    monkeypatch.setattr(sampling, "NUCLEUS_GROWTH", 2)
    flat = torch.linspace(0.0, 1.0, 30)[None]
    peaked = torch.zeros(1, 30)
    peaked[0, 5] = 10.0
    rows = torch.cat([flat.repeat(30000, 1), peaked.repeat(10, 1)])
    drawn = choose_tokens(rows, 1.0, torch.Generator().manual_seed(5), top_p=0.7)
    expected = filter_logits(flat.double(), 0, 0.7)[0].softmax(-1)
    assert (frequencies(drawn[:30000], 30) - expected).abs().max() < 0.008
    assert set(drawn[:30000].tolist()) == set(torch.nonzero(expected > 0)[:, 0].tolist())
    assert set(drawn[30000:].tolist()) == {5}


def test_the_same_seed_draws_the_same_tokens_across_chunks(monkeypatch):
    monkeypatch.setattr(sampling, "CHUNK_ELEMENTS", 64)  # 1000 rows of 16 → 250 chunks
    logits = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    for kwargs in ({}, {"top_p": 0.9}, {"top_k": 4}):
        a = choose_tokens(logits, 1.0, torch.Generator().manual_seed(7), **kwargs)
        b = choose_tokens(logits, 1.0, torch.Generator().manual_seed(7), **kwargs)
        assert torch.equal(a, b) and a.shape == (1000,)
        assert len(set(a.tolist())) > 1


def test_sampling_a_large_vocabulary_makes_no_float64_row_and_no_temporary_beyond_a_chunk():
    """64 positions × a 126k vocabulary in bf16 (as LLaDA's logits): float64 only over candidates
    (rows × NUCLEUS_CANDIDATES), every temporary within CHUNK_ELEMENTS (the input is 2x that)."""
    rows, vocab = 64, 126_464
    logits = peaked_logits(rows, vocab, torch.bfloat16)
    assert logits.numel() > 1.9 * sampling.CHUNK_ELEMENTS
    for kwargs in ({"top_p": 0.95}, {"top_k": 50}, {}):
        with TensorSizes() as sizes:
            drawn = choose_tokens(logits, 2.0, torch.Generator().manual_seed(0), **kwargs)
        assert drawn.shape == (rows,) and bool((drawn < 8).all()) == bool(kwargs)
        assert sizes.largest(torch.float64) <= rows * sampling.NUCLEUS_CANDIDATES, kwargs
        assert sizes.largest() <= sampling.CHUNK_ELEMENTS, kwargs


def test_propose_reads_confidence_chunk_by_chunk():
    rows, vocab = 64, 126_464
    logits = peaked_logits(rows, vocab, torch.bfloat16)
    for kind in ("probability", "margin", "entropy"):
        with TensorSizes() as sizes:
            p = propose(logits, 0, rows, SamplingParams(temperature=1.0, top_p=0.9), DiffusionOptions(confidence=kind),
                        torch.Generator().manual_seed(0))
        assert sizes.largest() <= sampling.CHUNK_ELEMENTS, kind
        assert bool(p.known.all()) and bool((p.tokens < 8).all()) and bool((p.confidence > 0).all())
    # the chunked confidence is the whole-row softmax's
    assert torch.allclose(p.confidence, logits.float().softmax(-1).gather(-1, p.tokens[:, None])[:, 0])


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
