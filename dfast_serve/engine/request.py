"""What the engine is asked to do: one generation, as token ids plus how to decode them."""

from __future__ import annotations

from dataclasses import dataclass, field

from dfast_serve.wire import DiffusionOptions, SamplingParams


@dataclass
class GenerationRequest:
    """One generation: prompt token ids plus how to decode them.

    ``diffusion`` is ignored by the AR family; when None a diffusion family uses its defaults.
    """

    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    diffusion: DiffusionOptions | None = None
    request_id: str = ""
    prompt_field: str = "prompt"  # the request field the ids came from ("messages" for chat): refusals name it
