"""The tokenizer routes every model replica answers (vLLM's ``/tokenize`` and ``/detokenize``) and the prompt
encoding of its ``generate``, over ``self.tokenizing`` (a ``models.tokenizing.Tokenizing``: the model adapter
itself, or vLLM's tokenizer wrapped). Torch-free: the vLLM replica's environment loads it too."""

from __future__ import annotations

import logging
from typing import Any

from dfast_serve.wire import APIError, bad_request

logger = logging.getLogger(__name__)


class ReplicaTokens:
    """Mixed into ``ModelReplica`` and ``VLLMReplica``, which set ``name`` and ``tokenizing``."""

    name: str
    tokenizing: Any

    def tokenize(self, prompt: str | None, messages: list[dict[str, str]] | None, add_special_tokens: bool = True,
                 add_generation_prompt: bool = True) -> list[int] | APIError:
        try:
            return self._tokens(prompt, messages, add_special_tokens, add_generation_prompt)
        except APIError as refused:
            return refused
        except Exception as exc:  # noqa: BLE001 - a template that rejects the messages is the client's error
            return self._untokenizable("messages" if messages is not None else "prompt", exc)

    def _tokens(self, prompt: str | None, messages: list[dict[str, str]] | None, add_special_tokens: bool = True,
                add_generation_prompt: bool = True) -> list[int]:
        if messages is not None:
            return self.tokenizing.encode_chat(messages, add_generation_prompt)
        if add_special_tokens:
            return self.tokenizing.encode_prompt(prompt or "")
        return [int(t) for t in self.tokenizing.tokenizer.encode(prompt or "", add_special_tokens=False)]

    def _untokenizable(self, field: str, exc: Exception) -> APIError:
        """A chat template (Gemma's raise on bad roles, say) or tokenizer that rejects the input: a 400 naming
        the field, with no exception text for the client and no traceback in the log."""
        logger.warning("model %s could not tokenize the %s: %s: %s", self.name, field, type(exc).__name__, exc)
        if field == "messages":
            return bad_request("messages: the model's chat template rejected the messages (check the roles and "
                               "their order)", field)
        return bad_request(f"{field}: the tokenizer rejected it", field)

    def detokenize(self, tokens: list[int]) -> tuple[str, list[str]] | APIError:
        tokenizer = self.tokenizing.tokenizer
        if tokens and max(tokens) >= len(tokenizer):
            return APIError(400, f"token ids must be below the vocabulary size {len(tokenizer)}", param="tokens")
        return tokenizer.decode(tokens), [str(t) for t in tokenizer.convert_ids_to_tokens(tokens)]
