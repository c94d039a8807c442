"""DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``): loading and the two forwards the engine runs.

The model is an encoder over everything final (the prompt, then each finished canvas), which
writes a KV cache, and a decoder that denoises one ``canvas_length`` canvas against that cache
(read-only), with self-conditioning on the previous step's logits. Both forwards are
transformers' own modules, called the way its ``generate`` calls them; the scheduler, sampler and
streaming are ours (``engine/block/``). The sampler's defaults come from the
checkpoint's ``generation_config.json`` (``GemmaSampling``). Text only: an image in a request is
refused before it gets here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfast_serve.models.adapters import Tokenizing, _dtype
from dfast_serve.models.native import checkpoint_directory, load_tokenizer

# transformers' global defaults for DiffusionGemma generation, used where the checkpoint's
# generation_config.json leaves a value unset (DiffusionGemmaGenerationConfig._get_default_generation_params).
DEFAULT_SAMPLING = {"max_denoising_steps": 48, "entropy_bound": 0.1, "t_min": 0.4, "t_max": 0.8,
                    "stability_threshold": 1, "confidence_threshold": 0.005}


@dataclass(frozen=True)
class GemmaSampling:
    """The checkpoint's sampler settings: denoising steps per canvas, the entropy bound of the
    acceptance rule, the linear temperature schedule (t_max at the first step, t_min at the last)
    and the stable-and-confident stop (None: off)."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int | None = 1
    confidence_threshold: float | None = 0.005

    @classmethod
    def from_generation_config(cls, config: Any) -> "GemmaSampling":
        def value(name: str, raw: Any) -> Any:
            return DEFAULT_SAMPLING[name] if raw is None else raw

        sampler = getattr(config, "sampler_config", None)
        bound = sampler.entropy_bound if sampler is not None and hasattr(sampler, "entropy_bound") else None
        if isinstance(sampler, dict):
            bound = sampler.get("entropy_bound")
        return cls(max_denoising_steps=value("max_denoising_steps", getattr(config, "max_denoising_steps", None)),
                   entropy_bound=value("entropy_bound", bound),
                   t_min=value("t_min", getattr(config, "t_min", None)),
                   t_max=value("t_max", getattr(config, "t_max", None)),
                   stability_threshold=value("stability_threshold", getattr(config, "stability_threshold", None)),
                   confidence_threshold=value("confidence_threshold", getattr(config, "confidence_threshold", None)))


@dataclass
class DiffusionGemmaLM(Tokenizing):
    """A loaded DiffusionGemma: its network, tokenizer, canvas geometry, EOS ids and sampler defaults."""

    network: Any = field(default=None)
    name: str = "diffusion-gemma"
    eos_token_ids: frozenset[int] = frozenset()
    canvas_length: int = 256
    vocab_size: int = 0
    max_context: int = 4096
    sampling: GemmaSampling = field(default_factory=GemmaSampling)
    kind: str = "diffusion_gemma"

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def embedding_dtype(self) -> torch.dtype:
        return self.network.model.decoder.embed_tokens.weight.dtype

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.network.config.get_text_config(decoder=True))

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, cache: Any, start: int) -> Any:
        """Run the encoder over ``ids`` (1, n), final tokens at positions ``start ..``, appending their
        keys/values to ``cache`` (the prompt, then each finished canvas)."""
        device = ids.device
        positions = torch.arange(start, start + ids.shape[1], dtype=torch.int32, device=device)[None]
        encoder = self.network.model.encoder
        masks = encoder.create_masks_for_generate(
            config=self.network.config, inputs_embeds=torch.empty((1, ids.shape[1], 0), dtype=self.network.dtype,
                                                                  device=device),
            attention_mask=torch.ones((1, start + ids.shape[1]), dtype=torch.bool, device=device), cache=cache,
            position_ids=positions)
        return encoder(input_ids=ids, attention_mask=masks, cache=cache, position_ids=positions).cache

    @torch.no_grad()
    def denoise(self, canvases: torch.Tensor, cache: Any, starts: list[int], self_conditioning: torch.Tensor | None,
                self_conditioning_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One decoder pass: logits (batch, canvas_length, vocab) in float32, soft-capped, for canvases
        (batch, canvas_length) whose first positions are ``starts``, against ``cache`` (the rows'
        caches stacked: equal lengths, no padding)."""
        length = canvases.shape[1]
        positions = torch.stack([torch.arange(s, s + length, dtype=torch.int32, device=canvases.device)
                                 for s in starts])
        out = self.network(decoder_input_ids=canvases, cache=cache, decoder_position_ids=positions,
                           self_conditioning_logits=self_conditioning, self_conditioning_mask=self_conditioning_mask)
        return out.logits


def stack_caches(caches: list[Any]) -> Any:
    """The caches of several sequences of equal length as one batch (the decoder only reads them)."""
    if len(caches) == 1:
        return caches[0]
    merged = copy.copy(caches[0])
    layers = []
    for index, layer in enumerate(caches[0].layers):
        joined = copy.copy(layer)
        joined.keys = torch.cat([c.layers[index].keys for c in caches])
        joined.values = torch.cat([c.layers[index].values for c in caches])
        layers.append(joined)
    merged.layers = layers
    return merged


def _eos_ids(network: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(network, "generation_config", None), network.config.get_text_config()):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update([eos] if isinstance(eos, int) else eos)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def load_diffusion_gemma(path: str, name: str, device: str = "cpu", dtype: str = "float32") -> DiffusionGemmaLM:
    """A DiffusionGemma checkpoint directory (or hub id) through transformers' own class, no remote code."""
    from transformers import DiffusionGemmaForBlockDiffusion

    directory = checkpoint_directory(path)
    # Straight onto the device: a 52 GB checkpoint should not pass through host memory as a whole model first.
    network = DiffusionGemmaForBlockDiffusion.from_pretrained(str(directory), dtype=_dtype(dtype),
                                                              device_map=device).eval()
    tokenizer = load_tokenizer(Path(directory), "diffusion_gemma")
    text = network.config.get_text_config()
    return DiffusionGemmaLM(
        tokenizer=tokenizer, network=network, name=name, eos_token_ids=_eos_ids(network, tokenizer),
        canvas_length=int(network.config.canvas_length), vocab_size=int(text.vocab_size),
        max_context=int(text.max_position_embeddings),
        sampling=GemmaSampling.from_generation_config(network.generation_config),
    )
