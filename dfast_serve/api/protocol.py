"""OpenAI request bodies as pydantic models, and their translation into engine parameters.

Unknown top-level fields are refused (a typo must not be silently ignored), except a few
that OpenAI clients send routinely and that change nothing here (``user``; penalties and
``n`` only at their neutral values). Diffusion knobs travel in the ``dfast`` extension object.
vLLM's sampling extras that benchmark clients send (``ignore_eos``, ``min_tokens``,
``repetition_penalty``, ``min_p``, ``skip_special_tokens``, ``stream_options.continuous_usage_stats``)
are accepted and implemented (docs/api.md, "vLLM extras"); ``draft`` only on the native stream.
Types are strict: ``"5"``, ``5.0`` and ``true`` are not integers (ints are accepted as floats).
Every list stops at its first bad item (``fail_fast``): a small body of many bad items must not
make pydantic build an error object for each.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dfast_serve.wire import MAX_TOKENS_CEILING

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256

Strings = Annotated[list[str], Field(fail_fast=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = Field(False, description="vLLM extension: usage in every chunk.")


class _Sampling(_Strict):
    """Fields common to completions and chat completions."""

    model: str = Field(min_length=1, max_length=256)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=1_000_000, description="vLLM extension; 0 or -1: off.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: str | Strings | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Only 0 is supported.")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Only 0 is supported.")
    user: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_CEILING, description="Wins over max_tokens.")
    # vLLM extensions (their meaning for diffusion models: docs/api.md, "vLLM extras")
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_CEILING)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    skip_special_tokens: bool = True
    draft: bool = Field(False, description="Native stream only: the undecided tail's best guess in every chunk.")
    dfast: dict[str, Any] | None = Field(None, description="Diffusion options (DiffusionOptions fields).")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s or len(s) > MAX_STOP_LENGTH for s in stops):
            raise ValueError(f"stop sequences must be 1 to {MAX_STOP_LENGTH} characters")
        return stops

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        # A field validator (not a model validator) so that the error names stream_options;
        # ``stream`` is declared first, so it is already in ``info.data``.
        if v is not None and not info.data.get("stream", False):
            raise ValueError("only allowed when stream is true")
        return v

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def sampling_params(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments of ``engine.SamplingParams``."""
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": max(self.top_k, 0),
            "seed": self.seed,
            "stop": list(self.stop or []),
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "repetition_penalty": self.repetition_penalty,
            "min_p": self.min_p,
            "skip_special_tokens": self.skip_special_tokens,
            "draft": self.draft,
        }


class CompletionRequest(_Sampling):
    prompt: str | Strings = Field(description="One prompt (a list of exactly one string is accepted).")
    echo: Literal[False] = Field(False, description="Not supported.")
    logprobs: Literal[0] | None = Field(None, description="Not supported.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("prompt must not be empty")
        return v


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """``developer`` is OpenAI's newer name for ``system``: the chat templates here know ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(fail_fast=True)]
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024, fail_fast=True)
    logprobs: Literal[False] = Field(False, description="Not supported.")

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class TokenizeRequest(_Strict):
    """vLLM's ``POST /tokenize``: a ``prompt``, or chat ``messages`` rendered by the model's template."""

    model: str | None = Field(None, min_length=1, max_length=256)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=1024, validate_default=True)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @field_validator("messages")
    @classmethod
    def _one_input(cls, v: list[ChatMessage] | None, info: ValidationInfo) -> list[ChatMessage] | None:
        if (v is None) == (info.data.get("prompt") is None):
            raise ValueError("give exactly one of prompt or messages")
        return v

    def message_dicts(self) -> list[dict[str, str]] | None:
        if self.messages is None:
            return None
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class DetokenizeRequest(_Strict):
    """vLLM's ``POST /detokenize``."""

    model: str | None = Field(None, min_length=1, max_length=256)
    tokens: Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(max_length=MAX_TOKENS_CEILING,
                                                                         fail_fast=True)]
