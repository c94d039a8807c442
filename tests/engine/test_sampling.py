"""Sampling order: temperature first, then top-k/top-p on the tempered distribution (as Hugging Face and vLLM).

Cost bounded (issue #24): sampling draws over a candidate pre-selection (top-k/top-p) or the whole row
in float32 (plain temperature), in chunks of rows: no float64 tensor over the vocabulary, no temporary
larger than a chunk, and the draws are those of the exact distributions.
"""

from __future__ import annotations

import torch

from benchmarks.harness.allocations import TensorSizes
from dfast_serve.engine import sampling
from dfast_serve.engine.masked.proposal import propose
from dfast_serve.engine.sampling import choose_tokens, filter_logits
from dfast_serve.wire import SamplingParams
from dfast_serve.wire.options import DiffusionOptions


def test_top_p_filters_the_tempered_distribution():
    # p(T=1) = [.665, .245, .090]: a nucleus of 0.8 keeps tokens 0 and 1. At T=0.5 the tempered
    # distribution is [.867, .117, .016]: token 0 alone reaches 0.8, so token 1 is never drawn.
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = choose_tokens(logits, temperature=0.5, generator=generator, top_p=0.8)
    assert set(drawn.tolist()) == {0}
    wide = choose_tokens(logits, temperature=1.0, generator=generator, top_p=0.8)
    assert set(wide.tolist()) == {0, 1}


def test_top_k_keeps_the_k_best_at_any_temperature():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).repeat(4000, 1)
    drawn = choose_tokens(logits, temperature=5.0, generator=torch.Generator().manual_seed(1), top_k=2)
    assert set(drawn.tolist()) == {0, 1}


def test_the_nucleus_shortcut_samples_like_the_full_sort():
    """Top-p over the best candidates only, and the full-vocabulary fallback when they fall short,
    draw from the same distribution: frequencies agree with the exact nucleus probabilities."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2000) * 2
    for candidates in (sampling.NUCLEUS_CANDIDATES, 3):  # 3 candidates never cover 0.9: the fallback runs
        old, sampling.NUCLEUS_CANDIDATES = sampling.NUCLEUS_CANDIDATES, candidates
        try:
            drawn = choose_tokens(logits.repeat(8000, 1), 1.0, torch.Generator().manual_seed(2), top_p=0.9)
        finally:
            sampling.NUCLEUS_CANDIDATES = old
        kept = sampling.filter_logits(logits, 0, 0.9)[0]
        expected = kept.softmax(-1)
        frequency = torch.bincount(drawn, minlength=2000).double() / len(drawn)
        assert set(drawn.tolist()) <= set(torch.nonzero(kept > -torch.inf)[:, 0].tolist())
        top = expected.topk(5).indices
        assert torch.allclose(frequency[top], expected[top].double(), atol=0.015)


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
    """Flat rows need more than NUCLEUS_CANDIDATES; peaked rows in the same call do not. At a
    temperature other than 1, so that the rest of the row's mass is tempered too."""
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 2)
    monkeypatch.setattr(sampling, "NUCLEUS_GROWTH", 2)
    flat = torch.linspace(0.0, 3.0, 30)[None]
    peaked = torch.zeros(1, 30)
    peaked[0, 5] = 10.0
    rows = torch.cat([flat.repeat(30000, 1), peaked.repeat(10, 1)])
    drawn = choose_tokens(rows, 1.5, torch.Generator().manual_seed(5), top_p=0.7)
    expected = filter_logits(flat.double() / 1.5, 0, 0.7)[0].softmax(-1)
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
    for kwargs in ({"top_p": 0.95}, {"top_k": 50}, {}, {"top_k": vocab}):  # top_k = vocab: no filter
        with TensorSizes() as sizes:
            drawn = choose_tokens(logits, 2.0, torch.Generator().manual_seed(0), **kwargs)
        assert drawn.shape == (rows,) and bool((drawn < 8).all()) == (kwargs in ({"top_p": 0.95}, {"top_k": 50}))
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


def test_a_single_row_whose_candidates_fall_short_is_not_renormalised_over_them(monkeypatch):
    """One row at a time (fewer rows than candidates): top-p is still over the whole row's mass, so
    when the first candidates fall short the nucleus reaches past them."""
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 2)
    flat = torch.linspace(0.0, 2.0, 30)[None]
    generator = torch.Generator().manual_seed(6)
    for temperature in (2.0, 0.5):  # the rest of the row's mass tempered as the candidates are
        drawn = [int(choose_tokens(flat, temperature, generator, top_p=0.7)) for _ in range(2000)]
        nucleus = set(torch.nonzero(filter_logits(flat / temperature, 0, 0.7)[0] > -torch.inf)[:, 0].tolist())
        assert len(nucleus) > 2 and set(drawn) == nucleus, temperature


def test_row_chunks_hold_at_most_chunk_elements_and_at_least_one_row():
    chunk = sampling.CHUNK_ELEMENTS
    assert list(sampling.row_chunks(10, chunk // 4)) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(sampling.row_chunks(3, 3 * chunk)) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # a row beyond a chunk
    assert list(sampling.row_chunks(chunk, 1)) == [slice(0, chunk)]
    assert list(sampling.row_chunks(0, 8)) == []


def test_one_row_of_logits_gives_one_token_as_a_0_d_tensor():
    """The AR engine passes the last position's logits, 1-D (vocab,)."""
    logits = torch.tensor([0.0, 3.0, 1.0, -1.0])
    assert choose_tokens(logits, 0.0, None).shape == () and int(choose_tokens(logits, 0.0, None)) == 1
    for kwargs in ({}, {"top_k": 2}, {"top_p": 0.9}):
        token = choose_tokens(logits, 1.0, torch.Generator().manual_seed(0), **kwargs)
        assert token.shape == () and 0 <= int(token) < 4
