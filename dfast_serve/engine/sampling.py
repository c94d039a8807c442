"""Token choice from logits, shared by both engines.

Order as in Hugging Face and vLLM: the temperature divides the logits first, then top-k and
top-p (nucleus) filter the *tempered* distribution, then a token is drawn. (Filtering before the
temperature would keep a different nucleus: a low temperature sharpens the distribution, so fewer
tokens reach ``top_p``.) The repetition penalty and min-p are applied to the logits before this
(``Sequence.shape_logits``); min-p is expressed there on the raw logits, scaled by the temperature,
so that it acts on the tempered distribution as in vLLM.

Cost is bounded whatever the number of positions (a diffusion pass may sample a whole canvas):

* rows are sampled in chunks of at most ``CHUNK_ELEMENTS`` logits (``row_chunks``), so no temporary
  is larger than a chunk's, whatever the number of rows;
* with top-k or top-p the draw runs over a candidate pre-selection taken by ``topk`` on the logits in
  their own dtype: the user's top-k, else (top-p) the best ``NUCLEUS_CANDIDATES``, and for the rows
  whose candidates' mass falls short of ``top_p`` (a flat distribution) ``NUCLEUS_GROWTH`` times as
  many, up to the whole row (a sort). The mass is against the row's total: the candidates' in float64
  plus the rest's in float32. The nucleus is then cut and the draw made in float64 on the candidates
  only (so over whole rows only for flat ones, and within a chunk). Exact: the nucleus is a prefix of
  the descending order, and the candidates hold that prefix (up to ties in the last logit, as any sort);
* plain temperature sampling draws over the whole vocabulary, exactly, in float32: softmax, cumulative
  sum and one uniform per row (inverse CDF). Each token's interval in the cumulative sum is its
  probability up to one float32 rounding (~6e-8 absolute), so only tokens rarer than that are
  mis-weighted; a candidate pre-selection would instead drop the tail outright. Greedy (temperature 0)
  is an argmax, as before.

The draw itself is by inverse CDF (one uniform per row, from the request's generator): the same
seed gives the same tokens.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

CHUNK_ELEMENTS = 1 << 22  # logits sampled at once (rows × vocab): 16 MB per float32 temporary
NUCLEUS_CANDIDATES = 256  # top-p looks at this many best tokens first
NUCLEUS_GROWTH = 8  # then, for the rows whose candidates fall short of top_p, this many times more, and so on


def row_chunks(rows: int, vocab: int) -> Iterator[slice]:
    """Slices of ``rows`` holding at most ``CHUNK_ELEMENTS`` logits each (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf, along the last dimension (a full sort:
    the reference the sampler's candidate pre-selection is tested against)."""
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


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """One token per row of ``logits`` (..., vocab): greedy at temperature 0 (top-k/top-p always keep
    the argmax); otherwise drawn from ``softmax(logits / temperature)`` restricted by top-k/top-p,
    chunk by chunk (see the module docstring)."""
    if temperature <= 0:
        # max(-1) picks the first maximal index as argmax does, and is 1.4x (float32) to 4x (bf16) faster on a
        # CPU over a 126k vocabulary (benchmarks/peers/vs_dlmserve.py's op profile)
        return logits.max(-1).indices
    vocab = logits.shape[-1]
    rows = logits.reshape(-1, vocab)
    out = torch.empty(rows.shape[0], dtype=torch.long, device=logits.device)
    for part in row_chunks(rows.shape[0], vocab):
        out[part] = _sample(rows[part], temperature, generator, top_k, top_p)
    return out.reshape(logits.shape[:-1])


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_k: int,
            top_p: float) -> torch.Tensor:
    """Tokens for a chunk of rows (rows, vocab)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        return _from_candidates(logits, top_k, temperature, top_p, None, generator)[0]
    if top_p >= 1.0:
        return _inverse_cdf((logits.float() / temperature).softmax(-1), generator)
    scaled = logits.float() / temperature
    tokens = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    pending = torch.arange(len(logits), device=logits.device)
    k = min(vocab, NUCLEUS_CANDIDATES)
    while len(pending):  # rows whose candidates' mass fell short retry with NUCLEUS_GROWTH times as many
        drawn, short = _from_candidates(logits[pending], k, temperature, top_p, scaled[pending], generator)
        tokens[pending[~short]] = drawn[~short]
        pending, k = pending[short], min(vocab, NUCLEUS_GROWTH * k)
    return tokens


def _from_candidates(logits: torch.Tensor, k: int, temperature: float, top_p: float, scaled: torch.Tensor | None,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens drawn among each row's ``k`` best, and which rows' candidates fell short of ``top_p``
    (their token is not valid). ``scaled`` (the float32 tempered rows): top-p is over the whole row's
    mass, as without top-k; None: over the candidates' (top-k renormalises before top-p, as Hugging Face)."""
    values, indices = torch.topk(logits, k, dim=-1)  # descending, in the logits' own dtype
    tempered = values.double() / temperature
    short = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
    if top_p < 1.0:
        total = torch.logsumexp(tempered, -1, keepdim=True)
        if scaled is not None and k < logits.shape[-1]:
            total = _with_rest(total, scaled, indices)
        probs = (tempered - total).exp()
        if scaled is not None and k < logits.shape[-1]:
            short = probs.sum(-1) < top_p
        tempered = tempered.masked_fill(probs.cumsum(-1) - probs >= top_p, float("-inf"))  # keep the one crossing
    return indices.gather(-1, _inverse_cdf(tempered.softmax(-1), generator)[:, None])[:, 0], short


def _with_rest(candidates_total: torch.Tensor, scaled: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The log-sum-exp of whole rows: the candidates' (float64, exact) plus the rest's, summed in float32
    (a small mass when the candidates cover the nucleus, so its rounding hardly moves the total)."""
    top = candidates_total.float()
    rest = (scaled - top).exp_().scatter_(-1, indices, 0.0).sum(-1, keepdim=True).double()
    return candidates_total + torch.log1p(rest)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (rows, n; each row sums to ~1), drawn with one uniform per row:
    the first index whose cumulative probability exceeds it. Zero-probability indices are never drawn."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    uniform = torch.rand((len(probs), 1), generator=generator, device=probs.device, dtype=probs.dtype)
    # below the row's total, so that some index with positive probability is above it
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True)[:, 0]


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
