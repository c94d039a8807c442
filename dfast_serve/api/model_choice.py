"""Which served model answers a request: the one it names, or for ``"auto"`` the engine rule.

The rule (from the design): AR for very short outputs, where one prefill plus a few decode
steps beats any denoising schedule; diffusion otherwise, where early streaming and parallel
decoding pay off. "Short" means ``max_tokens < auto_ar_below_tokens`` (16 by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dfast_serve.api.errors import APIError

AUTO = "auto"
EngineKind = Literal["diffusion", "ar"]


@dataclass(frozen=True)
class ServedModel:
    name: str
    engine: EngineKind


def auto_engine(max_tokens: int, auto_ar_below_tokens: int) -> EngineKind:
    return "ar" if max_tokens < auto_ar_below_tokens else "diffusion"


def choose_model(requested: str, max_tokens: int, served: list[ServedModel], auto_ar_below_tokens: int) -> ServedModel:
    """The served model for a request; 404 in the OpenAI shape when there is none."""
    if requested == AUTO:
        wanted = auto_engine(max_tokens, auto_ar_below_tokens)
        for model in served:
            if model.engine == wanted:
                return model
        return served[0]  # only one engine is served: it answers everything
    for model in served:
        if model.name == requested:
            return model
    names = ", ".join([AUTO] + [m.name for m in served])
    raise APIError(404, f"The model '{requested}' does not exist; served: {names}", "invalid_request_error",
                   "model", "model_not_found")
