"""The AR adapter: a Hugging Face causal LM with a KV cache, behind the calls the AR family makes.

The family (``engine/ar``) decides who shares a pass and how rows are laid out; everything that
touches transformers' cache classes is here: ``forward_alone`` runs one sequence on its own cache,
``stack_caches`` lays several sequences' caches into one padded batch cache, ``forward_batch`` runs a
laid-out batch on it, ``row_of`` names one row of a batch cache (a view: no copy) and ``copy_row``
takes a row's masked entries out (a copy). Only caches made of plain ``DynamicLayer``s can be stacked
and split (``merges_caches``); sliding-window or quantized layers would need their own bookkeeping,
so such a model runs its sequences one per pass.

Stackable caches are ``GrowingLayer``s: preallocated key/value buffers that a pass writes its new
columns into in place (transformers' ``DynamicLayer`` concatenates, copying the whole layer every
pass). A sequence's own cache is sized for its prompt and a first part of its answer; a batch cache
keeps room to grow; either, when full, doubles (amortized: a constant number of copies per token). So a batch cache
kept across steps is appended to, not copied, every decode step.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from dfast_serve.models.tokenizing import Tokenizing

Cache = Any  # transformers' DynamicCache (None before prefill) or a ``CacheRow``; opaque to the engine
BATCH_ROOM = 64  # spare columns a new batch cache keeps for the passes to come (then it doubles)


@dataclass(frozen=True)
class CacheRow:
    """One sequence's cache as a row of a batch cache: its ``length`` real columns end at column ``end``
    (left padding before them). A view: nothing is copied until it is stacked into another batch."""

    cache: Cache
    row: int
    end: int
    length: int

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.cache.layers[index]
        start = self.end - self.length
        return layer.keys[self.row, :, start : self.end], layer.values[self.row, :, start : self.end]

    def get_seq_length(self) -> int:
        return self.length


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

    @functools.cached_property
    def attention_span(self) -> float:
        """The context length at which a token's attention (scores and weighted sum: ~4 x hidden FLOPs per
        cached position and layer) costs as much as its layer's matmuls (~2 x the layer's parameters): how
        much more a prompt token deep in a long context costs (``engine/ar/pacing.py``)."""
        config = self.network.config.get_text_config(decoder=True)
        embeddings = {id(p) for module in (self.network.get_input_embeddings(), self.network.get_output_embeddings())
                      if module is not None for p in module.parameters()}
        layer_params = sum(p.numel() for p in self.network.parameters() if id(p) not in embeddings)
        return layer_params / config.num_hidden_layers / (2 * config.hidden_size)

    @staticmethod
    def cache_length(cache: Cache) -> int:
        return 0 if cache is None else cache.get_seq_length()

    @staticmethod
    def owns(cache: Cache) -> bool:
        """Whether ``cache`` is a sequence's own one-row growing cache (one a batch may take over as is)."""
        return cache is not None and not isinstance(cache, CacheRow) and all(
            isinstance(layer, growing_layer()) for layer in cache.layers)

    @torch.inference_mode()
    def forward_alone(self, ids: torch.Tensor, cache: Cache, reserve: int = 0) -> tuple[torch.Tensor, Cache]:
        """One sequence's pass: ``ids`` (1, n) after ``cache`` (None: a new cache, with room for ``reserve``
        positions when stackable); its last position's logits (vocab,) in float32 and its grown cache."""
        if cache is None and self.merges_caches:
            cache = self._growing_cache([None] * self._layers(), max(reserve, ids.shape[1]))
        elif isinstance(cache, CacheRow):  # a row of a batch cache, alone now: a cache of its own
            cache = self.stack_caches([cache], [cache.length], cache.length, 1, room=BATCH_ROOM)
        out = self.network(input_ids=ids, use_cache=True, **self._last_logits, **{self._cache_arg: cache})
        return out.logits[0, -1].float(), _cache_of(out)

    def stack_caches(self, caches: list[Cache], past_lens: list[int], columns: int, rows: int,
                     room: int = 0) -> Cache:
        """One batch cache of ``rows`` rows and ``columns`` key columns (growing: room for ``room`` more
        before it reallocates): row i holds ``caches[i]`` (its own cache or a ``CacheRow``) right-aligned,
        zeros before it; rows past ``len(caches)`` are zeros. None when there is no past."""
        reference = next((c for c in caches if c is not None), None)
        if columns == 0 or reference is None:
            return None
        layers = []
        for index in range(self._layers()):
            ref_keys = _layer(reference, index)[0]
            heads, head_dim = ref_keys.shape[-3], ref_keys.shape[-1]
            keys = ref_keys.new_zeros((rows, heads, columns + room, head_dim))
            values = torch.zeros_like(keys)
            for i, (cache, past) in enumerate(zip(caches, past_lens)):
                if past:
                    k, v = _layer(cache, index)
                    keys[i, :, columns - past : columns] = k[..., k.shape[-2] - past :, :].reshape(heads, past, head_dim)
                    values[i, :, columns - past : columns] = v[..., v.shape[-2] - past :, :].reshape(heads, past, head_dim)
            layers.append(growing_layer().holding(keys, values, columns))
        return self._growing_cache(layers)

    @torch.inference_mode()
    def forward_batch(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Cache
                      ) -> tuple[torch.Tensor, Cache]:
        """A laid-out batch's pass on ``cache`` (grown in place): each row's last-position logits
        (rows, vocab) in float32, and the grown batch cache."""
        out = self.network(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **self._last_logits, **{self._cache_arg: cache})
        return out.logits[:, -1].float(), _cache_of(out)

    @staticmethod
    def row_of(cache: Cache, row: int, end: int, length: int) -> CacheRow:
        """Row ``row`` of a left-padded batch cache, whose ``length`` real columns end at ``end``: a view."""
        return CacheRow(cache, row, end, length)

    def copy_row(self, cache: Cache, row: int, real: torch.Tensor) -> Cache:
        """Row ``row``'s key columns where ``real`` (a mask row) is set, as a cache of its own: a copy."""
        columns = real.nonzero()[:, 0]
        keys = [(layer.keys[row : row + 1, :, columns], layer.values[row : row + 1, :, columns]) for layer in cache.layers]
        return self._growing_cache([growing_layer().holding(k, v, k.shape[-2]) for k, v in keys])

    def _layers(self) -> int:
        return self.network.config.get_text_config(decoder=True).num_hidden_layers

    def _growing_cache(self, layers: list[Any], capacity: int = 0) -> Cache:
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.layers = [layer if layer is not None else growing_layer()(capacity) for layer in layers]
        return cache


def _layer(cache: Cache, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(cache, CacheRow):
        return cache.layer(index)
    layer = cache.layers[index]
    return layer.keys, layer.values


@functools.cache
def growing_layer() -> type:
    """The ``GrowingLayer`` class (it subclasses transformers' ``DynamicLayer``: defined on first use)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in preallocated buffers (rows, heads, capacity,
        head_dim): ``update`` writes the new columns in place and returns views of the filled part; a full
        buffer doubles. ``keys`` / ``values`` are those views, so the rest of transformers sees a
        ``DynamicLayer`` of the filled length."""

        def __init__(self, capacity: int = 0) -> None:
            super().__init__()
            self.capacity = capacity
            self._keys = self._values = None

        @classmethod
        def holding(cls, keys: torch.Tensor, values: torch.Tensor, filled: int) -> "GrowingLayer":
            """A layer over buffers ``keys`` / ``values`` whose first ``filled`` columns hold entries."""
            layer = cls(keys.shape[-2])
            layer._keys, layer._values = keys, values
            layer.device, layer.dtype, layer.is_initialized = keys.device, keys.dtype, True
            layer._fill(filled)
            return layer

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            rows, heads, _, head_dim = key_states.shape
            self.device, self.dtype, self.is_initialized = key_states.device, key_states.dtype, True
            self._keys = key_states.new_empty((rows, heads, self.capacity, head_dim))
            self._values = value_states.new_empty((rows, heads, self.capacity, value_states.shape[-1]))
            self._fill(0)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start = self.keys.shape[-2]
            end = start + key_states.shape[-2]
            if end > self._keys.shape[-2]:  # full: double (a copy, amortized over the columns it makes room for)
                grown = max(end, 2 * self._keys.shape[-2])
                self._keys = torch.cat([self.keys, self._keys.new_empty((*self._keys.shape[:2], grown - start,
                                                                         self._keys.shape[-1]))], dim=-2)
                self._values = torch.cat([self.values, self._values.new_empty((*self._values.shape[:2], grown - start,
                                                                               self._values.shape[-1]))], dim=-2)
            self._keys[:, :, start:end] = key_states
            self._values[:, :, start:end] = value_states
            self._fill(end)
            return self.keys, self.values

        def _fill(self, filled: int) -> None:
            self.keys, self.values = self._keys[:, :, :filled], self._values[:, :, :filled]

    return GrowingLayer


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
