"""What one diffusion forward pass proposes for the answer: a token, its confidence and a rank per position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfast_serve.engine.masked.confidence import confidence_of
from dfast_serve.wire.options import DiffusionOptions
from dfast_serve.engine.sampling import choose_tokens, row_chunks
from dfast_serve.models.pieces import Pieces, drive
from dfast_serve.wire import SamplingParams


@dataclass
class Proposal:
    """Per answer position (1-D, ``max_tokens`` long); positions the pass did not score (``known``
    False) have confidence 0 and score -inf."""

    tokens: torch.Tensor  # proposed token ids
    confidence: torch.Tensor  # probability of the proposed token
    certainty: torch.Tensor  # the `confidence` option's measure, met against `threshold`
    score: torch.Tensor  # ranking used to pick commits (certainty, or random)
    known: torch.Tensor  # positions this pass scored


def propose(window_logits: torch.Tensor, offset: int, gen_len: int, params: SamplingParams,
            options: DiffusionOptions, generator: torch.Generator, eligible: torch.Tensor | None = None) -> Proposal:
    """See ``propose_pieces``: the proposal, whole."""
    return drive(propose_pieces(window_logits, offset, gen_len, params, options, generator, eligible))


def propose_pieces(window_logits: torch.Tensor, offset: int, gen_len: int, params: SamplingParams,
                   options: DiffusionOptions, generator: torch.Generator, eligible: torch.Tensor | None = None,
                   per_piece: int | None = None) -> Pieces[Proposal]:
    """The proposal from logits scoring answer positions ``offset .. offset + len(window_logits)``.

    Only ``eligible`` positions (those a commit policy may decide at this pass; default all) are
    sampled and count as scored: sampling and the confidence read every position's whole vocabulary,
    so a long canvas must not pay it for positions no policy can decide now. Both run in row chunks
    (``sampling.row_chunks``): no float32 softmax over all rows at once. With ``per_piece``, a piece (a
    yield) before each ``per_piece`` sampled positions, each sampled on its own (the draws, and so a seeded
    answer, depend on ``per_piece``, not on when the pieces run)."""
    rows = torch.arange(offset, offset + len(window_logits), device=window_logits.device)
    if eligible is not None:
        keep = eligible[offset : offset + len(window_logits)]
        if not bool(keep.all()):  # a copy of the window's logits only when some rows drop out
            rows, window_logits = rows[keep], window_logits[keep]
    count = len(window_logits)
    proposed = torch.empty(count, dtype=torch.long, device=window_logits.device)
    confidence = torch.empty(count, dtype=torch.float32, device=window_logits.device)
    certainty = torch.empty_like(confidence)
    pieces = [slice(0, count)] if per_piece is None else [
        slice(i, min(i + per_piece, count)) for i in range(0, count, per_piece)]
    for piece in pieces:
        if per_piece is not None:
            yield
        proposed[piece] = choose_tokens(window_logits[piece], params.temperature, generator, params.top_k, params.top_p)
        for part in row_chunks(piece.stop - piece.start, window_logits.shape[-1]):
            part = slice(piece.start + part.start, piece.start + part.stop)
            probs = window_logits[part].float().softmax(-1)
            confidence[part] = probs.gather(-1, proposed[part, None])[:, 0]
            certainty[part] = confidence_of(probs, confidence[part], options.confidence)
    if options.remasking == "random":
        score = torch.rand(confidence.shape, generator=generator, device=confidence.device)
    else:
        score = certainty

    def spread(values: torch.Tensor, fill: float) -> torch.Tensor:
        out = torch.full((gen_len,), fill, dtype=values.dtype, device=values.device)
        out[rows] = values
        return out

    known = torch.zeros(gen_len, dtype=torch.bool, device=window_logits.device)
    known[rows] = True
    return Proposal(spread(proposed, 0), spread(confidence, 0.0), spread(certainty, 0.0), spread(score, -torch.inf), known)
