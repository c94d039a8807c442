"""From our wire records to vLLM's and back, for ``engine: vllm`` (``vllm_replica.py``).

Pure functions over plain values (vLLM's outputs are read by attribute), so they are tested without vLLM:
``sampling_kwargs`` maps a request's ``SamplingParams`` onto ``vllm.SamplingParams``' keyword arguments, and
refuses what does not map with a 400 naming the field; ``ChunkStream`` turns vLLM's per-step deltas
(``RequestOutputKind.DELTA``) into the ``StreamingChunk`` deltas every engine streams.

Usage is vLLM's own count, as bare vLLM reports it: every generated token, the EOS token and the
token that completed a stop string included.
"""

from __future__ import annotations

import time
from typing import Any

from dfast_serve.wire import APIError, FinishReason, SamplingParams, StreamingChunk, bad_request

VLLM_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """``vllm.SamplingParams(**kwargs)`` for ``params``; a field vLLM has no equivalent for is a 400."""
    if params.draft:
        raise bad_request("draft is a diffusion stream's undecided tail; engine: vllm decides token by token and "
                          "has none", "draft")
    return {
        "n": 1, "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k, "seed": params.seed, "stop": list(params.stop), "ignore_eos": params.ignore_eos,
        "min_tokens": params.min_tokens, "repetition_penalty": params.repetition_penalty, "min_p": params.min_p,
        "skip_special_tokens": params.skip_special_tokens,
    }


def context_error(prompt_tokens: int, max_tokens: int, limit: int, field: str) -> APIError | None:
    """The 400 for a prompt and answer that do not fit the engine's ``max_model_len`` (the transformers
    engine's wording and codes: ``engine/limits.check_context``), or None when they fit."""
    if prompt_tokens + max_tokens <= limit:
        return None
    if prompt_tokens >= limit:
        return bad_request(f"{field} is {prompt_tokens} tokens; the model's limit is {limit} (its context)", field,
                           "context_length_exceeded")
    return bad_request(f"{field} is {prompt_tokens} tokens and max_tokens {max_tokens}; together they exceed the "
                       f"model's limit of {limit} tokens (its context)", "max_tokens", "context_length_exceeded")


class ChunkStream:
    """One request's vLLM outputs as stream chunks. Each forward pass decides one token per request, so
    ``nfe`` is the tokens generated so far."""

    def __init__(self, prompt_tokens: int, max_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.total = 0  # tokens generated
        self.reported = 0  # tokens behind the chunks sent
        self.sent = 0
        self.started = time.monotonic()

    def chunk(self, output: Any) -> StreamingChunk | None:
        """The chunk for one ``RequestOutput`` (delta mode), or None when it adds nothing to send (no text,
        not final: the detokenizer is holding back a possible stop string or an incomplete character)."""
        completion = output.outputs[0]
        new_tokens = len(completion.token_ids)
        self.total += new_tokens
        if not completion.text and not output.finished:
            return None
        finished = bool(output.finished)
        reason = completion.finish_reason
        if finished and reason not in VLLM_FINISH_REASONS:
            raise RuntimeError(f"vLLM ended the request with finish_reason {reason!r}")
        chunk = StreamingChunk(
            new_text=completion.text, new_tokens=self.total - self.reported, total_tokens=self.total,
            target_tokens=self.max_tokens, progress=1.0 if finished else min(1.0, self.total / self.max_tokens),
            time_ms=(time.monotonic() - self.started) * 1000, is_first=self.sent == 0, is_final=finished,
            nfe=self.total, finish_reason=VLLM_FINISH_REASONS[reason] if finished else None,
            prompt_tokens=self.prompt_tokens)
        self.sent += 1
        self.reported = self.total
        return chunk
