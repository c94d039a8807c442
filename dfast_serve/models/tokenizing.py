"""Prompt encoding shared by every model adapter: plain prompts and chat messages through the
tokenizer (and its chat template, when it has one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        if not getattr(self.tokenizer, "chat_template", None):
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
            return self.encode_prompt(text + "\nassistant:" if add_generation_prompt else text)
        return _as_id_list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                              tokenize=True))
