"""Token choice from logits, shared by both engines.

Order as in Hugging Face and vLLM: the temperature divides the logits first, then top-k and
top-p (nucleus) filter the *tempered* distribution, then a token is drawn. (Filtering before the
temperature would keep a different nucleus: a low temperature sharpens the distribution, so fewer
tokens reach ``top_p``.) The repetition penalty and min-p are applied to the logits before this
(``Sequence.shape_logits``); min-p is expressed there on the raw logits, scaled by the temperature,
so that it acts on the tempered distribution as in vLLM.
"""

from __future__ import annotations

import math

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf, along the last dimension."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


NUCLEUS_CANDIDATES = 256  # top-p looks at this many best tokens first; the full sort only if they fall short


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Greedy at temperature 0 (top-k/top-p always keep the argmax); otherwise Gumbel-max sampling
    (float64, as LLaDA does) from ``softmax(logits / temperature)`` restricted by top-k/top-p.

    With top-k or top-p the draw runs over the best candidates only (top-p: the best
    ``NUCLEUS_CANDIDATES``, whose probability mass almost always covers ``top_p``; where it does not,
    the whole vocabulary is sorted): exact, without sorting the vocabulary at every position."""
    if temperature <= 0:
        # max(-1) picks the first maximal index as argmax does, and is 1.4x (float32) to 4x (bf16) faster on a
        # CPU over a 126k vocabulary (benchmarks/peers/vs_dlmserve.py's op profile)
        return logits.max(-1).indices
    tempered = logits.double() / temperature
    vocab = tempered.shape[-1]
    if not (0 < top_k < vocab) and top_p >= 1.0:
        return _gumbel_argmax(tempered, generator)
    k = top_k if 0 < top_k < vocab else min(vocab, NUCLEUS_CANDIDATES)
    values, indices = torch.topk(tempered, k, dim=-1)
    if top_p < 1.0:
        # top-k renormalises before top-p (as Hugging Face); without top-k the mass is the whole vocabulary's
        total = torch.logsumexp(values if 0 < top_k < vocab else tempered, dim=-1, keepdim=True)
        probs = (values - total).exp()
        if not 0 < top_k < vocab and bool((probs.sum(-1) < top_p).any()):
            return _gumbel_argmax(filter_logits(tempered, 0, top_p), generator)
        values = values.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))  # keep the one crossing top_p
    return indices.gather(-1, _gumbel_argmax(values, generator)[..., None])[..., 0]


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    return (logits - torch.log(-torch.log(uniform.clamp_min(1e-20)))).argmax(-1)


def penalize_repetition(logits: torch.Tensor, context_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """vLLM's (CTRL's) repetition penalty, in place: the logit of every token in ``context_ids`` is
    divided by ``penalty`` when positive and multiplied by it when negative (so > 1 discourages)."""
    if penalty == 1.0 or context_ids.numel() == 0:
        return logits
    ids = torch.unique(context_ids).to(logits.device)
    seen = logits[..., ids]
    logits[..., ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def apply_min_p(logits: torch.Tensor, min_p: float, temperature: float) -> torch.Tensor:
    """Drop, in place, the tokens whose probability after the temperature is below ``min_p`` × the top
    one: ``p_i / p_max = exp((l_i - l_max) / T)``, so the cut is ``l_max + T·ln(min_p)`` on the raw
    logits. Greedy decoding (T = 0) always keeps the top token: nothing to do."""
    if min_p <= 0.0 or temperature <= 0.0:
        return logits
    cut = logits.max(-1, keepdim=True).values + temperature * math.log(min_p)
    return logits.masked_fill_(logits < cut, float("-inf"))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
