"""The AR adapter: a Hugging Face causal LM with a KV cache, behind four calls the AR family makes.

The family (``engine/ar``) decides who shares a pass and how rows are laid out; everything that
touches transformers' cache classes is here: ``forward_alone`` runs one sequence on its own cache,
``stack_caches`` lays several sequences' caches into one padded batch cache, ``forward_batch`` runs a
laid-out batch, and ``row_cache`` takes one row's real entries back out. Only caches made of plain
``DynamicLayer``s can be stacked and split (``merges_caches``); sliding-window or quantized layers
would need their own bookkeeping, so such a model runs its sequences one per pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from dfast_serve.models.tokenizing import Tokenizing

Cache = Any  # transformers' DynamicCache (None before prefill); opaque to the engine


@dataclass
class CausalLM(Tokenizing):
    """An autoregressive Hugging Face causal LM with a KV cache."""

    network: nn.Module = field(default=None)  # type: ignore[assignment]
    name: str = "ar"
    eos_token_ids: frozenset[int] = frozenset()
    max_context: int = 2048

    def __post_init__(self) -> None:
        params = inspect.signature(self.network.forward).parameters
        # transformers 5 names the KV cache argument `cache`; 4.x calls it `past_key_values`.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # Only the last position's logits are ever read: without this the LM head runs on every
        # prompt position at prefill (SmolLM2: 49K-vocab projection per token, ~1/5 of the pass).
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.merges_caches = _plain_dynamic_cache(self.network.config)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @staticmethod
    def cache_length(cache: Cache) -> int:
        return 0 if cache is None else cache.get_seq_length()

    @torch.inference_mode()
    def forward_alone(self, ids: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, Cache]:
        """One sequence's pass: ``ids`` (1, n) after ``cache``; its last position's logits (vocab,) in
        float32 and its grown cache."""
        out = self.network(input_ids=ids, use_cache=True, **self._last_logits, **{self._cache_arg: cache})
        return out.logits[0, -1].float(), _cache_of(out)

    def stack_caches(self, caches: list[Cache], past_lens: list[int], columns: int, rows: int) -> Cache:
        """One batch cache of ``rows`` rows and ``columns`` key columns: row i holds ``caches[i]``
        right-aligned (zeros before it), rows past ``len(caches)`` are zeros. None when there is no past."""
        from transformers import DynamicCache

        reference = next((c for c in caches if c is not None), None)
        if columns == 0 or reference is None:
            return None
        layers = []
        for index, ref_layer in enumerate(reference.layers):
            _, heads, _, head_dim = ref_layer.keys.shape
            keys = ref_layer.keys.new_zeros((rows, heads, columns, head_dim))
            values = torch.zeros_like(keys)
            for i, (cache, past) in enumerate(zip(caches, past_lens)):
                if past:
                    keys[i, :, columns - past :] = cache.layers[index].keys[0]
                    values[i, :, columns - past :] = cache.layers[index].values[0]
            layers.append((keys, values))
        return DynamicCache(ddp_cache_data=layers)

    @torch.inference_mode()
    def forward_batch(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Cache
                      ) -> tuple[torch.Tensor, Callable[[int], Cache]]:
        """A laid-out batch's pass: each row's last-position logits (rows, vocab) in float32, and a
        function giving row i's own cache (its real key columns, as ``mask`` marks them)."""
        from transformers import DynamicCache

        out = self.network(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **self._last_logits, **{self._cache_arg: cache})
        merged = _cache_of(out)

        def row_cache(row: int) -> Cache:
            real = mask[row].nonzero()[:, 0]
            return DynamicCache(ddp_cache_data=[(layer.keys[row : row + 1, :, real], layer.values[row : row + 1, :, real])
                                                for layer in merged.layers])

        return out.logits[:, -1].float(), row_cache


def _cache_of(out: Any) -> Cache:
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


def _plain_dynamic_cache(config: Any) -> bool:
    """Whether the model's cache is all plain ``DynamicLayer``s, whose tensors can be padded and split."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except (AttributeError, KeyError, TypeError, ValueError):  # a config it cannot read layer types from
        return False
    return all(type(layer) is DynamicLayer for layer in layers)
