"""Strict batch invariance: every forward pass has one fixed padded shape per bucket (diffusion and AR).

Default batching left-pads a pass's rows to its longest slice (``batching.left_pad``), so a row's
tensors change shape with its mates, and kernels block their reductions by shape: in bf16 a row's
logits then move by up to ~0.6 and greedy tokens flip. Here a row's shape is a function of its own
plan alone: its slice is left-padded to ``bucket(slice length)``, its cached context to
``bucket(context length)``, only rows of the same bucket pair share a pass, and the batch is filled
up to a fixed row count with dummy rows, so every pass of that bucket has the same shape, the same
attention mask over the row's own positions and the same (empty) logit trimming. Each token's
arithmetic is then the same whoever its mates are: matrix products treat rows independently at a
given shape, and attention masks padding keys out per row. The price is padding (up to 2x on short
slices, up to ``BUCKET_STEP`` - 1 tokens on long ones) and dummy rows when fewer requests share a
bucket than a pass holds (the bf16 agreement benchmark measures it). ``engine/ar/shape.py`` does the
same for the AR family's merged prefill / decode passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfast_serve.engine.batching import bucket
from dfast_serve.engine.masked.kv_cache import ForwardPlan
from dfast_serve.wire.tensors import KeyValues

@dataclass(frozen=True)
class PassShape:
    """A pass's fixed shape: slice tokens and cached context per row (both bucketed), and rows."""

    tokens: int
    context: int
    rows: int

    @classmethod
    def of(cls, plan: ForwardPlan, max_rows: int, token_budget: int | None) -> "PassShape":
        """The shape of the pass ``plan`` runs in: ``max_rows`` rows, fewer where rows × bucket would
        exceed ``token_budget`` (a long bucket runs fewer rows, the same number every time)."""
        tokens = bucket(plan.tokens)
        rows = max_rows if token_budget is None else max(1, min(max_rows, token_budget // tokens))
        return cls(tokens, bucket(plan.context_len), rows)


@dataclass
class FixedBatch:
    """One fixed-shape pass's inputs: (rows, tokens) ids and positions, the (rows, context + tokens)
    mask of real keys, and each layer's (rows, heads, context, head_dim) cached keys/values or None."""

    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    past: list[KeyValues] | None


def assemble(shape: PassShape, slices: list[torch.Tensor], plans: list[ForwardPlan], fill_id: int,
             device: torch.device) -> FixedBatch:
    """Right-align each row's slice and context in ``shape``; rows past ``slices`` are dummies (``fill_id``
    tokens, every key real, so no row attends to nothing)."""
    if len(slices) > shape.rows:
        raise ValueError(f"{len(slices)} rows do not fit a pass of {shape.rows}")
    t, c = shape.tokens, shape.context
    ids = torch.full((shape.rows, t), fill_id, dtype=torch.long, device=device)
    positions = torch.zeros((shape.rows, t), dtype=torch.long, device=device)
    mask = torch.ones((shape.rows, c + t), dtype=torch.long, device=device)
    for i, (tokens, plan) in enumerate(zip(slices, plans)):
        n = plan.tokens
        ids[i, t - n :] = tokens
        positions[i, t - n :] = torch.arange(plan.start, plan.end, device=device)
        mask[i, c : c + t - n] = 0
        mask[i, : c - plan.context_len] = 0
    past = None
    if c:
        past = []
        reference = next(p.context for p in plans if p.context is not None)
        for layer, (ref_keys, _) in enumerate(reference):
            heads, _, head_dim = ref_keys.shape
            keys = ref_keys.new_zeros((shape.rows, heads, c, head_dim))
            values = torch.zeros_like(keys)
            for i, plan in enumerate(plans):
                n = plan.context_len
                keys[i, :, c - n :] = plan.context[layer][0]
                values[i, :, c - n :] = plan.context[layer][1]
            past.append((keys, values))
    return FixedBatch(ids, positions, mask, past)
