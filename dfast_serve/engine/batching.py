"""Left padding: how sequences of different lengths share one forward pass.

Rows are right-aligned so that every sequence's last position is the batch's last column (what
an AR decode reads); a mask marks the real entries, and callers pass explicit position ids so
that padding shifts no position. Masked keys get exactly zero attention weight, so a row's result
does not depend on its neighbours in exact arithmetic. In floating point it does, a little.
Measured on this project's 2-core CPU (torch 2.13): a float32 matmul row is not bit-identical
across row counts (the kernel blocks differently for different M; a copy of a sequence batched
with itself is identical, padding to another length is not); a padded row's logits differ from
the same sequence alone by ~1e-5 in float32 (tiny-mdlm, SmolLM2) and by up to ~0.6 in bf16
(SmolLM2), where greedy tokens do flip within a few dozen tokens. Right-padding is no better.
So what batching keeps, and the tests check, is the greedy tokens in float32: one changes only
at a near-tie (top-2 logit gap ~1e-5). bf16 batches are not batch-invariant; the opt-in
``batch_invariance: strict`` makes the diffusion and AR engines' passes so without special kernels, by
giving every pass a fixed shape per length bucket (``fixed_shape``).
"""

from __future__ import annotations

from typing import Sequence

import torch


def left_pad(tensors: Sequence[torch.Tensor], dim: int = 0, value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``tensors`` (equal shapes except along ``dim``) into a new batch dimension, padded at
    the front of ``dim`` to the longest; and a (batch, longest) long mask, 1 on real entries."""
    if len(tensors) == 1:  # nothing to pad: no copy
        return tensors[0].unsqueeze(0), torch.ones(1, tensors[0].shape[dim], dtype=torch.long, device=tensors[0].device)
    longest = max(t.shape[dim] for t in tensors)
    rows, masks = [], []
    for t in tensors:
        missing = longest - t.shape[dim]
        pad_shape = list(t.shape)
        pad_shape[dim] = missing
        rows.append(torch.cat([t.new_full(pad_shape, value), t], dim=dim))
        masks.append(torch.cat([torch.zeros(missing, dtype=torch.long), torch.ones(t.shape[dim], dtype=torch.long)]))
    return torch.stack(rows), torch.stack(masks).to(tensors[0].device)


def split_into(items: list, size: int) -> list[list]:
    """``items`` in order, ``size`` at a time."""
    return [items[i : i + size] for i in range(0, len(items), size)]


SMALLEST_BUCKET = 16
BUCKET_STEP = 128  # buckets are powers of two up to this, then its multiples


def bucket(n: int) -> int:
    """The padded length of ``n`` tokens: the next power of two (at least ``SMALLEST_BUCKET``) up to
    ``BUCKET_STEP``, then the next multiple of ``BUCKET_STEP``; 0 stays 0 (no cached context)."""
    if n <= 0:
        return 0
    if n > BUCKET_STEP:
        return -(-n // BUCKET_STEP) * BUCKET_STEP
    return max(SMALLEST_BUCKET, 1 << (n - 1).bit_length())
