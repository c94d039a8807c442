"""The router's cheap bound on prompt size, checked before any tokenizer runs (``max_prompt_chars``).

Tokenizing costs a replica CPU time in proportion to the text (~1 s for 1 MB), so a prompt that
cannot fit any served context is refused here on its character count, in O(1) per message.
"""

from __future__ import annotations

from dfast_serve.api.errors import bad_request
from dfast_serve.api.protocol import ChatCompletionRequest, CompletionRequest


def prompt_chars(parsed: CompletionRequest | ChatCompletionRequest) -> tuple[str, int]:
    """The field the prompt text is in, and its length in characters (all messages together)."""
    if isinstance(parsed, ChatCompletionRequest):
        return "messages", sum(len(m.text()) for m in parsed.messages)
    prompt = parsed.prompt
    return "prompt", len(prompt if isinstance(prompt, str) else "".join(prompt))


def check_prompt_chars(parsed: CompletionRequest | ChatCompletionRequest, limit: int) -> None:
    """400 ``context_length_exceeded`` naming ``prompt`` / ``messages`` over ``limit`` characters."""
    field, chars = prompt_chars(parsed)
    if chars > limit:
        raise bad_request(f"{field} is {chars} characters; the limit is {limit} (max_prompt_chars), beyond any "
                          f"served model's context", field, "context_length_exceeded")
