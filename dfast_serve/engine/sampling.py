"""Token choice from logits, shared by both engines.

Order as in Hugging Face and vLLM: the temperature divides the logits first, then top-k and
top-p (nucleus) filter the *tempered* distribution, then a token is drawn. (Filtering before the
temperature would keep a different nucleus: a low temperature sharpens the distribution, so fewer
tokens reach ``top_p``.)
"""

from __future__ import annotations

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


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Greedy at temperature 0 (top-k/top-p always keep the argmax); otherwise Gumbel-max sampling
    (float64, as LLaDA does) from ``softmax(logits / temperature)`` restricted by top-k/top-p."""
    if temperature <= 0:
        return logits.argmax(-1)
    tempered = filter_logits(logits.double() / temperature, top_k, top_p)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)))
    return (tempered + gumbel).argmax(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
