"""Tensor type aliases shared by the engine and the models (a leaf: it imports only torch)."""

from __future__ import annotations

import torch

KeyValues = tuple[torch.Tensor, torch.Tensor]
"""One layer's (keys, values), each (batch, heads, seq, head_dim); RoPE already applied to the keys."""
