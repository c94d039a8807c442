"""How sure a diffusion step is of each proposed token: the measure ``DiffusionOptions.confidence`` names.

All three lie in [0, 1] so that one ``threshold`` reads the same way for each:

* ``probability``: the proposed token's probability (LLaDA's low-confidence remasking);
* ``margin``: top-1 minus top-2 probability (Dream's ``topk_margin``): low when two tokens compete;
* ``entropy``: exp(-H) of the whole distribution, the inverse of its perplexity. It is never above
  the top-1 probability, so at the same threshold it is the strictest of the three.
"""

from __future__ import annotations

import torch

from dfast_serve.wire.options import ConfidenceKind


def confidence_of(probs: torch.Tensor, proposed_probability: torch.Tensor, kind: ConfidenceKind) -> torch.Tensor:
    """(n,) confidence from ``probs`` (n, vocab) and the proposed tokens' probabilities (n,)."""
    if kind == "probability":
        return proposed_probability
    if kind == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    return torch.exp(-torch.special.entr(probs).sum(-1))  # entr(0) = 0: masked-out tokens add nothing
