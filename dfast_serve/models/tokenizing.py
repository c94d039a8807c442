"""Prompt encoding shared by every model adapter: plain prompts and chat messages through the
tokenizer (and its chat template, when it has one)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dfast_serve.wire import bad_request


def _as_id_list(encoded: Any) -> list[int]:
    """apply_chat_template returns a list, a dict or a BatchEncoding depending on the version."""
    if isinstance(encoded, dict) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


@dataclass
class Tokenizing:
    """Prompt encoding shared by both adapter kinds."""

    tokenizer: Any

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt))

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """The chat template's ids. A message that carries one of the tokenizer's control tokens as text is
        refused (400 naming it): rendered into the template it would be parsed as the token itself, so a
        user could close their turn and open a ``system`` one."""
        self.check_no_control_tokens(messages)
        if not getattr(self.tokenizer, "chat_template", None):
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return self.encode_prompt(text + "\nassistant:" if add_generation_prompt else text)
        return _as_id_list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                              tokenize=True))

    @cached_property
    def control_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens as text (``<|im_end|>``, ``<bos>``, ...), longest first."""
        special = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        for token in (getattr(self.tokenizer, "added_tokens_decoder", None) or {}).values():
            if getattr(token, "special", False):
                special.add(str(token.content) if hasattr(token, "content") else str(token))
        return tuple(sorted((t for t in special if t), key=len, reverse=True))

    def check_no_control_tokens(self, messages: list[dict[str, str]]) -> None:
        for i, message in enumerate(messages):
            content = message.get("content") or ""
            forged = next((t for t in self.control_tokens if t in content), None)
            if forged is not None:
                raise bad_request(f"messages[{i}].content contains {forged!r}, one of the model's control tokens; "
                                  f"messages carry text only", f"messages[{i}].content")


