"""Sampling order: temperature first, then top-k/top-p on the tempered distribution (as Hugging Face and vLLM)."""

from __future__ import annotations

import torch

from dfast_serve.engine.sampling import choose_tokens


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
    from dfast_serve.engine import sampling

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
