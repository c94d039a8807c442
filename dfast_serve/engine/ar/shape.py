"""Strict batch invariance for AR passes: one fixed shape per bucket (see ``masked/fixed_shape.py``
for why), and the layout of a batch of sequences at different points (prefill or decode) in it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfast_serve.engine.batching import bucket


@dataclass(frozen=True)
class ArShape:
    """An AR pass's fixed shape: input columns and cached key columns per row, and rows (a decode pass:
    ``max_batch_size``, dummy rows filling it; a prefill pass: 1, as a prompt always runs alone).

    A prefill row's input pads to ``bucket(prompt + 1)``; a decode row (one new token) attends to
    ``bucket(past + 2)`` keys, its cache padded to one less. The ``+ 1``: every row keeps at least one
    padding column, so the attention mask is never all ones; transformers drops such a mask (and changes
    the attention path) only when no row of the batch pads, which would make the path depend on the mates.
    """

    inputs: int
    past: int
    rows: int

    @classmethod
    def of(cls, past: int, new: int, rows: int) -> "ArShape":
        if past == 0:
            return cls(bucket(new + 1), 0, rows)
        columns = bucket(past + new + 1)
        return cls(new, columns - new, rows)


def layout(inputs: list[torch.Tensor], past_lens: list[int], shape: ArShape, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, inputs) ids and positions and the (rows, past + inputs) mask of real keys, each row
    right-aligned in ``shape`` (its cached keys end at column ``shape.past``). A dummy row attends to
    its last column only."""
    if len(inputs) > shape.rows:
        raise ValueError(f"{len(inputs)} rows do not fit a pass of {shape.rows}")
    q, p = shape.inputs, shape.past
    ids = torch.zeros((shape.rows, q), dtype=torch.long, device=device)
    positions = torch.zeros((shape.rows, q), dtype=torch.long, device=device)
    mask = torch.zeros((shape.rows, p + q), dtype=torch.long, device=device)
    mask[len(inputs) :, -1] = 1
    for i, (tokens, past) in enumerate(zip(inputs, past_lens)):
        n = tokens.shape[0]
        ids[i, q - n :] = tokens
        positions[i, q - n :] = torch.arange(past, past + n, device=device)
        mask[i, p - past : p] = 1
        mask[i, p + q - n :] = 1
    return ids, positions, mask
