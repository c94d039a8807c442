"""What tensors torch allocates while a block runs: a dispatch mode that records each op's new outputs."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class TensorSizes(TorchDispatchMode):
    """Records (dtype, numel) of every tensor an op allocates while active (views of its inputs are not
    counted). ``benchmarks/engine/sampling_cost.py`` reports the largest; ``tests/engine/test_sampling.py``
    bounds them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in list(args) + list((kwargs or {}).values())
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.seen.append((t.dtype, t.numel()))
        return out

    def largest(self, dtype: torch.dtype | None = None) -> int:
        """The most elements of one allocated tensor (of ``dtype``, when given)."""
        return max((n for d, n in self.seen if dtype is None or d == dtype), default=0)

    def largest_bytes(self) -> int:
        return max((n * d.itemsize for d, n in self.seen), default=0)
