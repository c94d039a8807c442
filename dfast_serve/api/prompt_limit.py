"""The router's cheap bound on prompt size, checked before any tokenizer runs (``max_prompt_chars``).

Tokenizing costs a replica CPU time in proportion to the text (~1 s for 1 MB), so a prompt that
cannot fit any served context is refused here on its character count, in O(1) per message.
"""

from __future__ import annotations

from dfast_serve.api.errors import bad_request
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest, TokenizeRequest

Prompted = CompletionRequest | ChatCompletionRequest | TokenizeRequest  # every request a tokenizer will read


def prompt_chars(parsed: Prompted) -> tuple[str, int]:
    """The field the prompt text is in, and its length in characters (all messages together)."""
    messages = getattr(parsed, "messages", None)
    if messages is not None:
        return "messages", sum(len(m.text()) for m in messages)
    prompt = parsed.prompt or ""
    return "prompt", len(prompt if isinstance(prompt, str) else "".join(prompt))


def check_prompt_chars(parsed: Prompted, limit: int) -> None:
    """400 ``context_length_exceeded`` naming ``prompt`` / ``messages`` over ``limit`` characters."""
    field, chars = prompt_chars(parsed)
    if chars > limit:
        raise bad_request(f"{field} is {chars} characters; the limit is {limit} (max_prompt_chars), beyond any "
                          f"served model's context", field, "context_length_exceeded")
