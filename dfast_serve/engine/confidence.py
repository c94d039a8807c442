"""How sure a diffusion step is of each proposed token: the measure ``DiffusionOptions.confidence`` names.

All three lie in [0, 1] so that one ``threshold`` reads the same way for each:

* ``probability``: the proposed token's probability (LLaDA's low-confidence remasking);
* ``margin``: top-1 minus top-2 probability (Dream's ``topk_margin``): low when two tokens compete;
* ``entropy``: exp(-H) of the whole distribution, the inverse of its perplexity. It is never above
  the top-1 probability, so at the same threshold it is the strictest of the three.
"""

from __future__ import annotations

import torch

from dfast_serve.engine.options import ConfidenceKind


def confidence_of(logits: torch.Tensor, proposed: torch.Tensor, kind: ConfidenceKind) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability of the proposed token, the ``kind`` measure), each (n,), from float ``logits``
    (n, vocab) and the proposed token ids (n,). Normalised with one log-sum-exp per row: the full
    softmax over the vocabulary is built only for ``entropy``, the one measure that needs it."""
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    probability = (logits.gather(-1, proposed[:, None]) - log_norm)[:, 0].exp()
    if kind == "probability":
        return probability, probability
    if kind == "margin":
        top2 = (logits.topk(2, dim=-1).values - log_norm).exp()
        return probability, top2[:, 0] - top2[:, 1]
    probs = (logits - log_norm).exp()
    return probability, torch.exp(-torch.special.entr(probs).sum(-1))  # entr(0) = 0: masked-out tokens add nothing
