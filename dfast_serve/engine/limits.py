"""A request's limits, checked once by its family before admission (``Family.validate``).

Every refusal is a ``wire.APIError`` 400 whose ``param`` names the field at fault: the prompt (or
the chat ``messages``) when it alone does not fit, ``max_tokens`` when the answer does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfast_serve.engine.request import GenerationRequest
from dfast_serve.wire import bad_request


@dataclass(frozen=True)
class EngineLimits:
    """Caps a server puts on one request beyond the model's context (None: no cap).

    ``max_canvas_tokens``: prompt + answer positions of a diffusion canvas (every pass computes them all);
    ``max_block_length``: a masked-diffusion block (the positions one block's passes score);
    ``max_draft_tokens``: the positions past the stream's cursor a masked-diffusion ``draft`` samples
    and shows (a draft would otherwise sample every undecided position at every pass).
    """

    max_canvas_tokens: int | None = None
    max_block_length: int | None = None
    max_draft_tokens: int | None = None


def check_prompt(request: GenerationRequest) -> None:
    if not request.prompt_ids:
        raise bad_request(f"{request.prompt_field} encodes to no tokens", request.prompt_field)
    if request.params.max_tokens < 1:
        raise bad_request("max_tokens must be at least 1", "max_tokens")


def check_context(request: GenerationRequest, limit: int, answer_positions: int | None = None,
                  why: str = "its context") -> None:
    """The prompt and ``answer_positions`` (default ``max_tokens``) must fit ``limit`` positions."""
    prompt, field = len(request.prompt_ids), request.prompt_field
    answer = request.params.max_tokens if answer_positions is None else answer_positions
    if prompt + answer <= limit:
        return
    if prompt >= limit:
        raise bad_request(f"{field} is {prompt} tokens; the model's limit is {limit} ({why})", field,
                          "context_length_exceeded")
    rounded = "" if answer == request.params.max_tokens else f" (rounded up to {answer} positions)"
    raise bad_request(f"{field} is {prompt} tokens and max_tokens {request.params.max_tokens}{rounded}; together "
                      f"they exceed the model's limit of {limit} tokens ({why})", "max_tokens",
                      "context_length_exceeded")
